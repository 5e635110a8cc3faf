"""SSDLite detection on any backbone: `python -m tasks.detection fit|validate|test|predict`."""
