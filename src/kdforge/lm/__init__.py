"""Language-model distillation: vocabulary alignment between teacher and student causal LMs, and its signals."""
