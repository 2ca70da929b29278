"""The training side: one loop shared by pretraining and finetuning, its tasks, optimiser and logs."""
