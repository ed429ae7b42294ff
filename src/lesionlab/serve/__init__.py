"""The web service (`create_app` in `serve.app`) and its page in `serve/static/`."""
