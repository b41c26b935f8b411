"""Evaluation of trained models: iGSM accuracy (vld.eval.igsm), knowledge capacity
(vld.eval.knowledge), compute (vld.eval.compute) and per-layer depth use (vld.eval.depth).

Every evaluation works on any nn.Module whose forward(tokens[B, T]) returns logits [B, T, V],
so it applies to every checkpoint and every VLD schedule the project trains.
"""
