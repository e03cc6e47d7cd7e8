"""`tunelab advise`: should this data be fine-tuned at all? The decision framework, fed by measurements."""
