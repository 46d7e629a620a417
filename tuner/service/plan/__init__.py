"""The stage plan: which cells and seeds train in one program and how much of a GPU each
trial takes, from the program's memory, the card's and the cluster's GPUs
(:mod:`~tuner.service.plan.programs`, :mod:`~tuner.service.plan.memory`,
:mod:`~tuner.service.plan.stage`)."""
