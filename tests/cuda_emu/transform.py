#!/usr/bin/env python3
"""transform.py IN.cu OUT.cpp - turns a CUDA C++ kernel file into the C++ that the CPU emulator
compiles (README.md beside): the two CUDA constructs that are not C++ are rewritten, everything
else is left to lu_emu_device.h's definitions.

  kernel<T><<<grid, block, smem, stream>>>(args)  ->  lu_emu::launch("kernel", kernel<T>, grid, block, smem, stream)(args)
  kernel<<<grid, block>>>(args)  ->  lu_emu::launch("kernel", [](auto... a) { kernel(a...); }, grid, block)(args)
      (a bare name may be a template whose arguments the call deduces)
  extern __shared__ __align__(16) T name[];       ->  #define name ((T *)::lu_emu::dynamic_smem())

Line numbers are kept (a #line directive and no added lines), so that compiler messages and
the emulator's failures point into the .cu file."""
import os
import re
import sys

LAUNCH = re.compile(r"\b([A-Za-z_]\w*)(\s*<[^<>;(){}]*>)?\s*<<<(.*?)>>>\s*\(", re.S)
DYNAMIC_SHARED = re.compile(
    r"^[ \t]*extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w \t]+?)\s+(\w+)\s*\[\s*\]\s*;", re.M)


def transform(text):
    def launch(m):
        name, targs, config = m.group(1), m.group(2), m.group(3)
        kernel = name + targs if targs else "[](auto... lu_a) { %s(lu_a...); }" % name
        return 'lu_emu::launch("%s", %s, %s)(' % (name, kernel, config)

    text = LAUNCH.sub(launch, text)
    text = DYNAMIC_SHARED.sub(lambda m: "#define %s ((%s *)::lu_emu::dynamic_smem())" % (m.group(2), m.group(1)),
                              text)
    if "<<<" in text or ">>>" in text:
        line = text[:text.find("<<<" if "<<<" in text else ">>>")].count("\n") + 1
        sys.exit("transform.py: line %d: a kernel launch this script does not understand" % line)
    return text


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: transform.py IN.cu OUT.cpp")
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        text = transform(f.read())
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write('#include "lu_emu_device.h"\n#line 1 "%s"\n' % src)
        f.write(text)
    os.replace(tmp, dst)


if __name__ == "__main__":
    main()
