"""Serving a trained model: the inference loop (`inference`), files in a batch (`predict_batch`), the web app and its
public facts (`app`, `app_info`) and exports (`export`). Libraries only: the commands read the options."""
