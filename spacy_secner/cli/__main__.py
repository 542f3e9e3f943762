from . import app

# Guarded: importing the module (pkgutil.walk_packages does) must not run the command.
if __name__ == "__main__":
    app()
