"""A persistent tesseract reader for the `ocr` reward (rewards/ocr.py), run as a script in a process of its own:

    python tesseract_worker.py LIBRARY WHITELIST PSM

It loads the real tesseract's library (libtesseract, the engine of the Debian package tesseract-ocr) through
tesseract's C API, once, then reads images from stdin until stdin closes. Starting tesseract (loading its English
model) costs ~35 reads of a 32x64 sign, so a process that stays up reads a batch ~2x faster than a `tesseract`
command per batch; a process of its own still keeps a crash in tesseract (version 5 dies of SIGFPE on some
noise-like images) out of the training process.

Protocol (little-endian, no pickle): after loading, the worker writes READY. Request: height, width (uint32 each),
then height * width bytes of an 8-bit grey image, row by row. Reply: the byte length of the text (uint32), then
the UTF-8 text tesseract reads through the whitelist, with page segmentation mode PSM (7: one text line; the
reward's option psm). A load failure is one line on stderr and exit status 1.

Only the standard library: the script is run by path, so it does not import visalign (nor torch).
"""

import ctypes
import struct
import sys

READY = b"TESS"


def load(library: str, whitelist: str, psm: int):
    """-> read(pixels, width, height) -> str, on one initialised TessBaseAPI."""
    lib = ctypes.CDLL(library)
    lib.TessBaseAPICreate.restype = ctypes.c_void_p
    lib.TessBaseAPIInit3.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.TessBaseAPISetPageSegMode.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.TessBaseAPISetVariable.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.TessBaseAPISetImage.argtypes = [ctypes.c_void_p, ctypes.c_char_p] + [ctypes.c_int] * 4
    lib.TessBaseAPIGetUTF8Text.argtypes = [ctypes.c_void_p]
    lib.TessBaseAPIGetUTF8Text.restype = ctypes.c_void_p  # a char* tesseract allocated: freed by TessDeleteText
    lib.TessDeleteText.argtypes = [ctypes.c_void_p]
    api = lib.TessBaseAPICreate()
    if lib.TessBaseAPIInit3(api, None, b"eng") != 0:  # None: tesseract's own tessdata directory, as the CLI
        raise RuntimeError("could not load tesseract's English model (eng.traineddata; Debian: tesseract-ocr-eng)")
    lib.TessBaseAPISetPageSegMode(api, psm)
    if not lib.TessBaseAPISetVariable(api, b"tessedit_char_whitelist", whitelist.encode()):
        raise RuntimeError("this tesseract has no tessedit_char_whitelist variable")

    def read(pixels: bytes, width: int, height: int) -> str:
        lib.TessBaseAPISetImage(api, pixels, width, height, 1, width)  # 1 byte per pixel, rows not padded
        text = lib.TessBaseAPIGetUTF8Text(api)
        try:
            return ctypes.string_at(text).decode("utf-8", errors="replace")
        finally:
            lib.TessDeleteText(text)

    return read


def main(library: str, whitelist: str, psm: str) -> int:
    try:
        read = load(library, whitelist, int(psm))
    except (OSError, RuntimeError, AttributeError) as e:  # AttributeError: a library without the C API
        print(f"{library}: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(READY)
    stdout.flush()
    while len(header := stdin.read(8)) == 8:
        height, width = struct.unpack("<II", header)
        pixels = stdin.read(height * width)
        if len(pixels) != height * width:  # the reader went away mid-image: never hand tesseract a short buffer
            break
        text = read(pixels, width, height).encode()
        stdout.write(struct.pack("<I", len(text)) + text)
        stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3]))
