"""Dataset generation and the on-disk token store shared by every dataset."""
