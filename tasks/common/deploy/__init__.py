"""Deployment of trained models: ONNX export, int8 post-training quantization, onnxruntime evaluation."""
