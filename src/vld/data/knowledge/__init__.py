"""Knowledge-capacity datasets: high-entropy random tokens and bioS-style random biographies.

  random_tokens  one fixed IID uniform sequence of k tokens over n values ("numbers are tokens")
  biographies    N people with unique names and uniform attributes, rendered as six sentences

Both write a token set (vld.data.tokens) whose meta.json records the dataset's exact entropy in
bits, so that measured capacity can be read against what the data could hold at most.
"""
