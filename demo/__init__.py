"""The demo deployment: a model API behind a gateway and the mltokens validator."""
