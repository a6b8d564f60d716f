"""``python -m onnxcomp`` is the same as the ``onnxcomp`` command."""

from .interrupt import guard


def main() -> None:
    guard()  # before numpy, onnxruntime or a solver start threads that would receive Ctrl-C
    from .cli import entry

    entry()


if __name__ == "__main__":
    main()
