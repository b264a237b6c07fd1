"""The model: the zoo of registered architectures, their builds and heads, pretrained
weights, costs (parameters, FLOPs), and the record of what a trial built."""
