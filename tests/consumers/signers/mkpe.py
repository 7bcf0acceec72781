#!/usr/bin/env python3
"""Writes a minimal valid PE32 executable (Windows console program whose entry point returns 0) for osslsigncode.

Usage: mkpe.py OUT.exe

DOS header → "PE\\0\\0" → COFF header (i386, one section) → PE32 optional header (16 empty data directories; the
certificate table is the one osslsigncode fills) → one .text section of one file-aligned block holding
`xor eax, eax; ret`. 1 KiB, no imports.
"""
import struct
import sys

FILE_ALIGN, SECT_ALIGN = 0x200, 0x1000


def pe32() -> bytes:
    dos = bytearray(0x40)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)  # e_lfanew
    coff = struct.pack("<HHIIIHH", 0x14C, 1, 0, 0, 0, 0xE0, 0x0102)  # i386; EXECUTABLE_IMAGE | 32BIT_MACHINE
    opt = struct.pack(
        "<HBBIIIIIIIIIHHHHHHIIIIHHIIIIII",
        0x10B, 14, 0,  # PE32, linker version
        FILE_ALIGN, 0, 0,  # size of code, initialized data, uninitialized data
        SECT_ALIGN, SECT_ALIGN, 2 * SECT_ALIGN,  # entry point, base of code, base of data
        0x400000, SECT_ALIGN, FILE_ALIGN,  # image base, section alignment, file alignment
        6, 0, 0, 0, 6, 0,  # OS, image, subsystem versions
        0, 2 * SECT_ALIGN, FILE_ALIGN, 0,  # Win32VersionValue, SizeOfImage, SizeOfHeaders, CheckSum
        3, 0x8140,  # console subsystem; NX_COMPAT | DYNAMIC_BASE | TERMINAL_SERVER_AWARE
        0x100000, 0x1000, 0x100000, 0x1000, 0, 16,  # stack/heap reserve and commit, loader flags, 16 directories
    ) + bytes(16 * 8)
    assert len(opt) == 0xE0
    text = struct.pack("<8sIIIIIIHHI", b".text", 3, SECT_ALIGN, FILE_ALIGN, FILE_ALIGN, 0, 0, 0, 0, 0x60000020)
    headers = bytes(dos) + b"PE\0\0" + coff + opt + text
    code = b"\x31\xc0\xc3"  # xor eax, eax; ret
    return headers.ljust(FILE_ALIGN, b"\0") + code.ljust(FILE_ALIGN, b"\0")


if __name__ == "__main__":
    with open(sys.argv[1], "wb") as f:
        f.write(pe32())
