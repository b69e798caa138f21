"""Training components: the forget set as training sees it (`forget_set`), the student, teacher,
optimizer and batches (`components`), one optimizer step (`step`), the loop and its state
(`loop`), checkpoints (`checkpoint`, `resume`) and the output directory (`outputs`).

Nothing here imports reporting or the command line; the recipe `recipes.unlearn` assembles it."""
