"""The gpu_env role on this machine (local connection) against stored GPU hosts.

i21: every remediation is checked by its effect (compute mode read back through the
tool, the GRUB line, the removed caches), not by the task having run. Check mode
changes nothing. The env file is sourced the way gpu_job sources it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "gpu_tools"
BIN = Path(sys.executable).parent

PLAY = """
- name: gpu_env on a stored host
  hosts: localhost
  gather_facts: false
  vars:
    ansible_become_method: su
  roles:
    - role: prng.cluster.gpu_env
"""

GRUB = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet splash"\nGRUB_CMDLINE_LINUX=""\n'


def host_copy(tmp: Path, scenario: str) -> Path:
    shutil.copytree(FIX / scenario, tmp / "scenario", symlinks=True)
    shutil.copy(FIX / "fake_smi.py", tmp / "fake_smi.py")
    (tmp / "grub").write_text(GRUB)
    for name in ("hip_0a1b", "comgr_x", "pip"):
        (tmp / "cache" / name).mkdir(parents=True)
        (tmp / "cache" / name / "blob").write_bytes(b"k" * 1024)
    return tmp


def run_role(tmp: Path, extra: dict, *args: str) -> subprocess.CompletedProcess[str]:
    play = tmp / "play.yml"
    play.write_text(PLAY)
    base = {
        "gpu_env_file": str(tmp / "home" / "worker.env"),
        "gpu_env_tool_search_path": [str(tmp / "scenario" / "bin")],
        "gpu_env_sysfs_root": str(tmp / "scenario" / "sys"),
        "gpu_env_proc_root": str(tmp / "scenario" / "proc"),
        "gpu_env_rocm_path": str(tmp / "scenario" / "rocm"),
        "gpu_env_grub_file": str(tmp / "grub"),
        "gpu_env_grub_update_command": ["touch", str(tmp / "grub-updated")],
        "gpu_env_hip_cache_root": str(tmp / "cache"),
        "ansible_python_interpreter": sys.executable,
    }
    # JSON results: a failed task's msg is one line, not wrapped as YAML would (see failures())
    env = dict(
        os.environ, PATH=f"{BIN}:/usr/bin:/bin", ANSIBLE_NOCOLOR="1", ANSIBLE_CALLBACK_RESULT_FORMAT="json"
    )
    return subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(play),
            "-e",
            json.dumps({**base, **extra}),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def sourced_env(env_file: Path) -> dict[str, str]:
    out = subprocess.run(
        ["/usr/bin/env", "-i", "/bin/sh", "-c", 'set -a; . "$1"; set +a; env', "sh", str(env_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def compute_modes(tmp: Path) -> list[str]:
    rows = (tmp / "scenario" / "nvidia-smi" / "query-gpu.out").read_text().splitlines()
    return [r.split(", ")[5] for r in rows]


@pytest.mark.skipif(os.geteuid() != 0, reason="become (su) to root needs root here")
def test_i21_i23_remediations_take_effect_and_are_idempotent(tmp_path: Path) -> None:
    zeus = host_copy(tmp_path / "zeus", "zeus_nvidia_exclusive")
    flags = {"gpu_env_gpu_type": "auto", "gpu_env_set_compute_mode": True, "gpu_env_clear_hip_cache": True}
    res = run_role(zeus, flags)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert compute_modes(zeus) == ["Default", "Default"]  # i23: read back through the tool
    assert sorted(p.name for p in (zeus / "cache").iterdir()) == ["pip"]
    env = sourced_env(zeus / "home" / "worker.env")
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and "HSA_OVERRIDE_GFX_VERSION" not in env
    again = run_role(zeus, flags)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-2000:]


@pytest.mark.skipif(os.geteuid() != 0, reason="become (su) to root needs root here")
def test_i21_gfxoff_boot_parameter_set_once_never_rebooted(tmp_path: Path) -> None:
    rig = host_copy(tmp_path / "rig", "rig6600_rocm_smi_hung")
    flags = {"gpu_env_gpu_type": "rocm", "gpu_env_set_boot_params": True}
    res = run_role(rig, flags)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    grub = (rig / "grub").read_text()
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet splash amdgpu.ppfeaturemask=0xffff7fff"' in grub
    assert (rig / "grub-updated").exists()
    assert (
        "Reboot to apply" in res.stdout
        and "skipping" in res.stdout.split("Reboot to apply")[1].split("TASK")[0]
    )
    assert "GFXOFF is on (ppfeaturemask 0xfff7bfff)" in res.stdout  # the loaded driver still has it on
    (rig / "grub-updated").unlink()
    again = run_role(rig, flags)
    assert again.returncode == 0 and "changed=0" in again.stdout
    assert (rig / "grub").read_text().count("ppfeaturemask") == 1 and not (rig / "grub-updated").exists()
    env = sourced_env(rig / "home" / "worker.env")
    assert env["HSA_OVERRIDE_GFX_VERSION"] == "10.3.0" and env["HSA_ENABLE_SDMA"] == "0"
    assert env["PYTORCH_HIP_ALLOC_CONF"] == "garbage_collection_threshold:0.8,max_split_size_mb:128"


def test_check_mode_changes_nothing(tmp_path: Path) -> None:
    zeus = host_copy(tmp_path / "zeus", "zeus_nvidia_exclusive")
    flags = {"gpu_env_set_compute_mode": True, "gpu_env_clear_hip_cache": True}
    res = run_role(zeus, flags, "--check")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert not (zeus / "home").exists()
    assert compute_modes(zeus) == ["Default", "Exclusive_Process"]
    assert sorted(p.name for p in (zeus / "cache").iterdir()) == ["comgr_x", "hip_0a1b", "pip"]


def test_env_file_quotes_values_and_override(tmp_path: Path) -> None:
    rig = host_copy(tmp_path / "rig", "rig6600_rocm_smi_healthy")
    odd = "a b 'c' $HOME `x`"
    res = run_role(
        rig, {"gpu_env_extra_vars": {"PRNG_NOTE": odd}, "gpu_env_hsa_override_gfx_version": "none"}
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    env = sourced_env(rig / "home" / "worker.env")
    assert env["PRNG_NOTE"] == odd  # quoted: no expansion, no command substitution
    assert "HSA_OVERRIDE_GFX_VERSION" not in env and env["ROCM_PATH"] == str(rig / "scenario" / "rocm")


def test_hip_cache_root_refuses_slash(tmp_path: Path) -> None:
    rig = host_copy(tmp_path / "rig", "no_tool")
    res = run_role(rig, {"gpu_env_clear_hip_cache": True, "gpu_env_hip_cache_root": "/"})
    assert res.returncode != 0 and "refusing to clear caches under '/'" in res.stdout


# -- i36: values written into shell-sourced files are pattern-checked and quoted ------------------
def grub_value(grub: Path) -> str:
    out = subprocess.run(
        [
            "/usr/bin/env",
            "-i",
            "/bin/sh",
            "-c",
            '. "$1"; printf %s "$GRUB_CMDLINE_LINUX_DEFAULT"',
            "sh",
            str(grub),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=grub.parent,
    )
    return out.stdout


def failures(res: subprocess.CompletedProcess[str]) -> list[str]:
    """The `msg` of every failed task in ansible-playbook's output (JSON-decoded)."""
    return [json.loads(m) for m in re.findall(r'"msg": ("(?:[^"\\]|\\.)*")', res.stdout)]


def test_i36_injection_in_ppfeaturemask_refused_nothing_written(tmp_path: Path) -> None:
    rig = host_copy(tmp_path / "rig", "rig6600_rocm_smi_hung")
    pwned = rig / "pwned"
    evil = f'0xffff"; touch {pwned}; x="'
    res = run_role(
        rig, {"gpu_env_gpu_type": "rocm", "gpu_env_set_boot_params": True, "gpu_env_ppfeaturemask": evil}
    )
    assert res.returncode != 0
    msg = (
        f"gpu_env_ppfeaturemask: found {json.dumps(evil)}, "
        "expected 0x and 1-8 hex digits (e.g. 0xffff7fff) or a decimal number"
    )
    assert msg in failures(res), res.stdout[-3000:]
    assert (rig / "grub").read_text() == GRUB and not (rig / "home").exists()  # nothing written
    assert grub_value(rig / "grub") == "quiet splash" and not pwned.exists()  # sourcing it runs nothing


@pytest.mark.parametrize("name", ["X=1; touch pwned; Y", "1BAD", "PATH\nx"])
def test_i36_env_var_name_injection_refused(tmp_path: Path, name: str) -> None:
    rig = host_copy(tmp_path / "rig", "rig6600_rocm_smi_healthy")
    res = run_role(rig, {"gpu_env_extra_vars": {name: "v"}})
    assert res.returncode != 0
    want = (
        f"gpu_env_extra_vars: variable name {json.dumps(name)} found, "
        "expected letters, digits and _ (not starting with a digit)"
    )
    assert want in failures(res), res.stdout[-3000:]
    assert not (rig / "home").exists() and not (rig / "pwned").exists()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("gpu_env_hsa_override_gfx_version", "10.3.0; touch pwned"),
        ("gpu_env_hsa_override_gfx_version", "10.3.0\n"),  # `$` would let the newline through
        ("gpu_env_rocm_path", "/opt/rocm$(touch pwned)"),
        ("gpu_env_pytorch_hip_alloc_conf", "max_split_size_mb:128'; touch pwned; '"),
    ],
)
def test_i36_env_values_pattern_checked(tmp_path: Path, var: str, value: str) -> None:
    rig = host_copy(tmp_path / "rig", "rig6600_rocm_smi_healthy")
    res = run_role(rig, {var: value})
    assert res.returncode != 0
    assert any(m.startswith(f"{var}: found {json.dumps(value)}, expected ") for m in failures(res)), (
        res.stdout[-3000:]
    )
    assert not (rig / "home").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="become (su) to root needs root here")
@pytest.mark.parametrize(
    ("old", "mask", "want"),
    [
        ('"quiet splash"', "0xfffd7fff", "quiet splash amdgpu.ppfeaturemask=0xfffd7fff"),
        ("'quiet  splash'", "4294934527", "quiet splash amdgpu.ppfeaturemask=4294934527"),
        ('"amdgpu.ppfeaturemask=0x1 quiet"', "0xFFFF7FFF", "quiet amdgpu.ppfeaturemask=0xFFFF7FFF"),
    ],
)
def test_i36_ppfeaturemask_written_quoted_sources_back_exactly(
    tmp_path: Path, old: str, mask: str, want: str
) -> None:
    rig = host_copy(tmp_path / "rig", "rig6600_rocm_smi_hung")
    (rig / "grub").write_text(GRUB.replace('"quiet splash"', old))
    flags = {"gpu_env_gpu_type": "rocm", "gpu_env_set_boot_params": True, "gpu_env_ppfeaturemask": mask}
    res = run_role(rig, flags)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert f'GRUB_CMDLINE_LINUX_DEFAULT="{want}"\n' in (rig / "grub").read_text()
    assert grub_value(rig / "grub") == want  # a real shell gives back exactly the intended string
    again = run_role(rig, flags)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-2000:]


@pytest.mark.parametrize("line", ['"quiet $(touch pwned)"', '"quiet `id`"', "quiet", '"a \\" b"'])
def test_i36_grub_line_that_expands_is_not_taken_over(tmp_path: Path, line: str) -> None:
    rig = host_copy(tmp_path / "rig", "rig6600_rocm_smi_hung")
    grub = GRUB.replace('"quiet splash"', line)
    (rig / "grub").write_text(grub)
    res = run_role(rig, {"gpu_env_gpu_type": "rocm", "gpu_env_set_boot_params": True})
    assert res.returncode != 0
    found = json.dumps("GRUB_CMDLINE_LINUX_DEFAULT=" + line)
    want = (
        f'{rig / "grub"}: found {found}, expected GRUB_CMDLINE_LINUX_DEFAULT="..." or \'...\' without " $ ` '
        "or backslash in it (edit it by hand)"
    )
    assert want in failures(res), res.stdout[-3000:]
    assert (rig / "grub").read_text() == grub and not (rig / "pwned").exists()
