"""Model providers behind one small interface (`base.ModelProvider`); one SDK per module."""
