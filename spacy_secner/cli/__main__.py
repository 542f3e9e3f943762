from . import app

# Guarded: importing the module (as the registry test does for every module) must not run it.
if __name__ == "__main__":
    app()
