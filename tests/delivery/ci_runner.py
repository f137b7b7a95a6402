"""Run the shell steps of a GitHub Actions workflow or a GitLab CI file, in order, as their runners would.

Only what the examples use is emulated, and anything else is an error rather than silently skipped:
GitHub ``${{ secrets.X }}`` / ``${{ vars.X }}`` / ``${{ github.X }}`` / ``${{ steps.ID.outputs.X }}``
expressions, workflow/job/step ``env``, ``$GITHUB_OUTPUT``, ``needs`` order; GitLab ``stages``,
``variables`` (with ``$VAR`` expansion), File-type variables (a path to a file holding the value) and
``script``. Each job runs on a fresh "machine": its own ``FF_HOME`` and work folder. ``uses:`` steps
(checkout, setup-python) and the install steps (``id: install`` on GitHub, ``before_script`` on GitLab)
are not run: the test's environment already has ff (a shim on PATH running this tree), jq and curl.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
_EXPR = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass
class StepRun:
    job: str
    name: str
    script: str
    returncode: int
    output: str


@dataclass
class Machine:
    """What every job gets: a PATH with ``ff``, a clean Docker config, no FF_* settings from outside."""

    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    runs: list[StepRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        bin_dir = self.root / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        shim = bin_dir / "ff"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ffcli "$@"\n')
        shim.chmod(0o755)

    def job_env(self, job: str) -> tuple[dict[str, str], Path]:
        home = self.root / "jobs" / job
        work = home / "work"
        work.mkdir(parents=True)
        for name in ("examples", "modelfiles"):  # the checkout
            (work / name).symlink_to(ROOT / name)
        (home / "docker").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FF_", "COSIGN_", "DOCKER_"))}
        env.update(
            PATH=f"{self.root / 'bin'}:{os.environ['PATH']}", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
            FF_HOME=str(home / "ff"), DOCKER_CONFIG=str(home / "docker"), HOME=str(home),
        )
        env.update(self.extra_env)
        return env, work

    def run(self, job: str, name: str, script: str, env: Mapping[str, str], cwd: Path) -> StepRun:
        proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=cwd, env=dict(env),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=900)
        finally:  # a job's background processes (ff serve) end with the job, as on a runner
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        run = StepRun(job, name, script, proc.returncode, out.decode(errors="replace"))
        self.runs.append(run)
        if run.returncode != 0:
            raise AssertionError(f"{job} / {name} exited with {run.returncode}:\n{script}\n---\n{run.output}")
        return run


# --- GitHub Actions -----------------------------------------------------------------------------------
def _lookup(ctx: Mapping[str, Any], expr: str) -> str:
    node: Any = ctx
    for part in expr.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise AssertionError(f"the workflow uses ${{{{ {expr} }}}}, which the test does not provide")
        node = node[part]
    return str(node)


def _expand(text: str, ctx: Mapping[str, Any]) -> str:
    return _EXPR.sub(lambda m: _lookup(ctx, m.group(1)), text)


def _job_order(jobs: Mapping[str, Any]) -> list[str]:
    done: list[str] = []
    while len(done) < len(jobs):
        def needs(spec: Mapping[str, Any]) -> list[str]:
            n = spec.get("needs", [])
            return [n] if isinstance(n, str) else list(n)

        ready = [j for j, spec in jobs.items() if j not in done and all(n in done for n in needs(spec))]
        if not ready:
            raise AssertionError("the workflow's needs form a cycle")
        done += ready[:1]
    return done


def run_github(path: Path, machine: Machine, *, secrets: dict[str, str], variables: dict[str, str],
               github: dict[str, str]) -> None:
    wf = yaml.safe_load(path.read_text())
    ctx: dict[str, Any] = {"secrets": secrets, "vars": variables, "github": github}
    top_env = {k: _expand(str(v), ctx) for k, v in (wf.get("env") or {}).items()}
    for job in _job_order(wf["jobs"]):
        spec = wf["jobs"][job]
        env, work = machine.job_env(job)
        env.update(top_env)
        env.update({k: _expand(str(v), ctx) for k, v in (spec.get("env") or {}).items()})
        env["GITHUB_SHA"] = github["sha"]
        steps_ctx: dict[str, Any] = {}
        ctx["steps"] = steps_ctx
        for i, step in enumerate(spec["steps"]):
            if "uses" in step or step.get("id") == "install":
                continue
            if "run" not in step or "if" in step:
                raise AssertionError(f"{job} step {i}: only plain run: steps are emulated")
            output = work.parent / f"output-{i}"
            output.write_text("")
            step_env = {**env, **{k: _expand(str(v), ctx) for k, v in (step.get("env") or {}).items()}}
            step_env["GITHUB_OUTPUT"] = str(output)
            name = step.get("name", step.get("id", str(i)))
            machine.run(job, name, _expand(step["run"], ctx), step_env, work)
            if "id" in step:
                outs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
                steps_ctx[step["id"]] = {"outputs": outs}


# --- GitLab CI --------------------------------------------------------------------------------------------
def _gl_expand(text: str, values: Mapping[str, str]) -> str:
    return _VAR.sub(lambda m: values.get(m.group(1) or m.group(2), ""), text)


def run_gitlab(path: Path, machine: Machine, *, predefined: dict[str, str], variables: dict[str, str],
               file_variables: dict[str, str]) -> None:
    doc = yaml.safe_load(path.read_text())
    reserved = {"stages", "variables", "default", "include", "workflow", "image", "before_script"}
    jobs = {k: v for k, v in doc.items() if k not in reserved and not k.startswith(".")}
    for stage in doc["stages"]:
        for job, spec in jobs.items():
            if spec.get("stage", "test") != stage:
                continue
            env, work = machine.job_env(job)
            values = {**predefined, **variables}
            for name, value in file_variables.items():  # GitLab's File type: the variable holds a path
                f = work.parent / f"var-{name}"
                f.write_text(value)
                values[name] = str(f)
            for k, v in (doc.get("variables") or {}).items():
                values[k] = _gl_expand(str(v), values)
            for k, v in (spec.get("variables") or {}).items():
                values[k] = _gl_expand(str(v), values)
            env.update(values)
            machine.run(job, job, "\n".join(spec["script"]), env, work)
