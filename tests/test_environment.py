"""The machine facts a result records: the CPU's vector extension tells two hosts of one CPU name apart."""

from __future__ import annotations

from cnnbench import environment

ZEN3 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse sse4_2 avx fma avx2 bmi2\n\nprocessor\t: 1\n"
XEON = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 avx512f avx512bw avx512_vnni\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\n"


def test_cpu_flags_are_read_from_the_first_processor():
    assert {"avx2", "fma"} <= environment.cpu_flags(ZEN3) and "avx512f" not in environment.cpu_flags(ZEN3)
    assert "asimd" in environment.cpu_flags(ARM)
    assert environment.cpu_flags("processor\t: 0\n") == frozenset()


def test_the_widest_vector_extension_is_recorded():
    assert environment.cpu_vector_extension(environment.cpu_flags(ZEN3)) == "avx2"
    assert environment.cpu_vector_extension(environment.cpu_flags(XEON)) == "avx512f"
    assert environment.cpu_vector_extension(environment.cpu_flags(ARM)) is None
    assert environment.cpu_vector_extension(frozenset()) is None


def test_the_manifest_records_this_machines_vector_extension():
    recorded = environment.collect()["cpu_vector_extension"]
    assert recorded == environment.cpu_vector_extension(environment.cpu_flags())
    assert recorded is None or recorded in environment.VECTOR_EXTENSIONS
