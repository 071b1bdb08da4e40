"""Families against outside references nobody here wrote: the JDK's java.util.Random and the
C++ standard library's std::mt19937 / std::minstd_rand, compiled in a temp dir and compared
byte for byte. Skips (with the reason) only where javac / g++ are missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from prng_workers.families import get_family

SEEDS = [0, 1, 42, 12345, 2**31 - 1, 2**32 - 1, 2**32 + 7, 2**47 + 3, 2**48 - 1, 987654321987]
COUNT = 700  # > 624: crosses an mt19937 twist

JAVA = """
public class Ref {
    public static void main(String[] a) {
        int count = Integer.parseInt(a[0]);
        for (int k = 2; k < a.length; k++) {
            java.util.Random r = new java.util.Random(Long.parseUnsignedLong(a[k]));
            int m = Integer.parseInt(a[1]);
            StringBuilder sb = new StringBuilder();
            for (int i = 0; i < count; i++) { if (i > 0) sb.append(' '); sb.append(r.nextInt(m)); }
            System.out.println(sb);
        }
    }
}
"""

CPP = r"""
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
int main(int argc, char** argv) {
    int count = std::atoi(argv[1]);
    std::string fam = argv[2];
    for (int k = 3; k < argc; k++) {
        unsigned long long seed = std::strtoull(argv[k], nullptr, 10);
        if (fam == "mt19937") {
            std::mt19937 g(static_cast<std::mt19937::result_type>(seed & 0xFFFFFFFFull));
            for (int i = 0; i < count; i++) std::printf(i ? " %u" : "%u", (unsigned)g());
        } else {
            std::minstd_rand g(static_cast<std::minstd_rand::result_type>(seed % 2147483647ull));
            for (int i = 0; i < count; i++) std::printf(i ? " %u" : "%u", (unsigned)g());
        }
        std::printf("\n");
    }
    return 0;
}
"""


def _run(argv: list[str], cwd: Path) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True, timeout=120).stdout


@pytest.fixture(scope="module")
def java_ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (shutil.which("javac") and shutil.which("java")):
        pytest.skip("javac/java not installed: cannot compare with the JDK")
    d = tmp_path_factory.mktemp("java")
    (d / "Ref.java").write_text(JAVA)
    _run(["javac", "Ref.java"], d)
    return d


@pytest.fixture(scope="module")
def cpp_ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("g++"):
        pytest.skip("g++ not installed: cannot compare with the C++ standard library")
    d = tmp_path_factory.mktemp("cpp")
    (d / "ref.cpp").write_text(CPP)
    _run(["g++", "-O1", "-std=c++17", "-o", "ref", "ref.cpp"], d)
    return d / "ref"


def _rows(text: str) -> np.ndarray:
    return np.array([[int(v) for v in line.split()] for line in text.strip().splitlines()], dtype=np.int64)


@pytest.mark.parametrize("m", [1000, 1024, 7, (1 << 30) + 1])
def test_java_random_equals_jdk(java_ref: Path, m: int):
    # (1 << 30) + 1 makes nextInt reject ~half its raw values: the rejection loop is exercised
    jdk = _rows(_run(["java", "-cp", str(java_ref), "Ref", str(COUNT), str(m), *map(str, SEEDS)], java_ref))
    fam = get_family("java_random")
    np.testing.assert_array_equal(fam.draws(SEEDS, COUNT, m), jdk)
    assert fam.reference_draws(SEEDS[3], COUNT, m) == jdk[3].tolist()
    # skip / offset select calls of the same JDK stream
    np.testing.assert_array_equal(fam.draws(SEEDS, 100, m, skip=4, offset=3),
                                  jdk[:, 3 + 5 * np.arange(1, 101) - 1])


@pytest.mark.parametrize("name", ["mt19937", "minstd"])
def test_cpp_std_engines(cpp_ref: Path, name: str):
    raw = _rows(_run([str(cpp_ref), str(COUNT), name, *map(str, SEEDS)], cpp_ref.parent))
    fam = get_family(name)
    m = 1 << 32  # m = 2^32 keeps the raw 32-bit outputs: byte-for-byte comparison
    np.testing.assert_array_equal(fam.draws(SEEDS, COUNT, m), raw)
    assert fam.reference_draws(SEEDS[5], COUNT, m) == raw[5].tolist()
    np.testing.assert_array_equal(fam.draws(SEEDS, COUNT, 1000), raw % 1000)
    np.testing.assert_array_equal(fam.draws(SEEDS, 60, 1000, skip=9, offset=17),
                                  raw[:, 17 + 10 * np.arange(1, 61) - 1] % 1000)
