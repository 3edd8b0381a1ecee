"""`ablate train`, by job: ``cli`` (the LightningCLI, ``main``), ``run_setup`` (one command's hold on its run folder:
lock, resume check, disk preflight, the failure record), ``trainer_options`` (the Trainer's ranges, GPUs and device
defaults), ``messages`` (bad input as one line). The run folder's files are ``lightning_modules.run_folder``'s."""
