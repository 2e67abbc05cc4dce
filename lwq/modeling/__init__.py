"""The model side of the pipeline: loading, finding blocks and linears, carrying block
inputs, removing blocks."""
