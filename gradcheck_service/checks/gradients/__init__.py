"""The gradient check: autograd's gradients against finite differences of the model's own forward.

``analytic`` (autograd's side), ``evaluator`` (the loss under perturbations), ``directions`` and ``in_place``
(what is perturbed, and how, in memory), ``finite_difference`` (derivative estimates and their error),
``gradcheck`` (per-tensor comparisons and verdicts), ``local`` and ``linear_layers`` (each module's own
parameters through its recorded call; stock linear layers through their exact map), ``localize`` (the faulty
module, by bisection of the module tree) and ``second_order``.
"""
