"""What runs offline, never while serving: routing data (MMLU conversion, chat forms), the CPU
trainer of functional tokens and its PyTorch Llama, router averaging and the prior fit."""
