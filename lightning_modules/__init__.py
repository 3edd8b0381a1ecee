"""Models and the LightningModule that trains them."""
