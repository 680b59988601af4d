"""Before downloading anything: compare the Hub's own hashes of every branch's weight files.

The Hub stores each weight file with Git LFS and publishes its sha256. Two branches whose weight files
have the same sha256s serve the same bytes, and a file whose sha256 appears in another branch is a
shared shard: what the reporters of EleutherAI/pythia#205 and #206 found, in seconds, without
downloading a checkpoint. `compare_branch_hashes` analyses a *listing* (branch -> the Hub API's tree
entries), so it is tested on recorded listings; `fetch_branch_listing` is the thin online part.

A listing is shaped like the Hub API's answers (`GET /api/models/{repo}/tree/{branch}?expand=true`):
{branch: [{"type": "file", "path": "model.safetensors", "size": ..., "lfs": {"oid": "<sha256>", ...}}, ...]}
(`lfs.sha256` as huggingface_hub's `RepoFile` names it is read too).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pythia_dynamics.audit.judge import Finding

__all__ = ["HubHashReport", "compare_branch_hashes", "fetch_branch_listing", "weight_file_hashes"]

_BRANCH_STEP = re.compile(r"^step(\d+)$")
_WEIGHT_FILE = re.compile(r"(\.safetensors|\.bin|\.pt|\.pth)$")


@dataclass
class HubHashReport:
    repo_id: str
    findings: dict[int, list[Finding]] = field(default_factory=dict)  # step -> reasons
    groups: list[list[int]] = field(default_factory=list)  # steps whose branches serve identical weight files
    missing: list[int] = field(default_factory=list)  # schedule steps with no branch
    unhashed: list[str] = field(default_factory=list)  # branches with no LFS hash for their weight files

    def __str__(self) -> str:
        lines = [f"Hub file hashes of {self.repo_id}: {len(self.findings)} branch(es) suspect, "
                 f"{len(self.missing)} schedule step(s) without a branch"]  # fmt: skip
        for step, reasons in sorted(self.findings.items()):
            lines += [f"  step{step}: {reason}" for reason in reasons]
        if self.unhashed:
            lines.append(f"  no LFS hashes listed for: {', '.join(self.unhashed[:8])}")
        return "\n".join(lines)


def weight_file_hashes(entries: Sequence[Mapping]) -> dict[str, str]:
    """{path: LFS sha256} of the weight files among one branch's tree entries."""
    hashes = {}
    for entry in entries:
        path, lfs = entry.get("path", ""), entry.get("lfs") or {}
        if entry.get("type", "file") == "file" and _WEIGHT_FILE.search(path) and lfs:
            sha = lfs.get("sha256") or lfs.get("oid")
            if sha:
                hashes[path] = str(sha)
    return hashes


def compare_branch_hashes(repo_id: str, listing: Mapping[str, Sequence[Mapping]],
                          schedule: Sequence[int] | None = None,
                          branch_steps: Mapping[str, int] | None = None) -> HubHashReport:  # fmt: skip
    """Which checkpoint branches serve identical weight files, share some of them, or are missing.

    `branch_steps` maps the suite's branch names to steps ('step1000-tokens4B' -> 1000 for OLMo); by
    default branches are Pythia's `step<N>`. Findings name steps; `missing` lists schedule steps with no branch.

    Identical: the same set of (path, sha256); in each group the final step's branch (else the earliest)
    is taken as genuine and the others are flagged. Shared: a weight file's sha256 that also appears in
    a branch it is not identical to; flagged on the branch that is not the final or first step (on both
    when neither is). Branches that hold no checkpoint step (main, tags) are ignored.
    """
    report = HubHashReport(repo_id)
    if branch_steps is None:
        branch_steps = {b: int(m.group(1)) for b in listing if (m := _BRANCH_STEP.match(b))}
    branches = {branch_steps[b]: weight_file_hashes(entries) for b, entries in listing.items() if b in branch_steps}
    report.unhashed = [f"step{s}" for s, h in sorted(branches.items()) if not h]
    hashed = {s: h for s, h in branches.items() if h}
    if schedule is not None:
        report.missing = [s for s in schedule if s not in branches]
        for step in report.missing:
            report.findings.setdefault(step, []).append(Finding("missing", f"no branch step{step} on the Hub ({repo_id})"))
    if not hashed:
        return report
    ends = (max(schedule) if schedule else max(hashed), min(schedule) if schedule else min(hashed))
    by_set: dict[tuple, list[int]] = defaultdict(list)
    for step in sorted(hashed):
        by_set[tuple(sorted(hashed[step].items()))].append(step)
    identical_to = {}
    for steps in by_set.values():
        if len(steps) < 2:
            continue
        report.groups.append(steps)
        genuine = ends[0] if ends[0] in steps else steps[0]
        for step in steps:
            if step != genuine:
                identical_to[step] = genuine
                report.findings.setdefault(step, []).append(
                    Finding("hub", f"the Hub serves the same weight files (LFS sha256) as step{genuine}")
                )
    holders: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for step, files in hashed.items():
        if step in identical_to:
            continue
        for path, sha in files.items():
            holders[sha].append((step, path))
    for sha, held in holders.items():
        if len(held) < 2:
            continue
        steps = sorted({s for s, _ in held})
        for step, path in held:
            others = [s for s in steps if s != step]
            genuine = next((e for e in ends if e in steps), None)
            if genuine == step:  # the final (or first) step keeps its own file; with neither, both are flagged
                continue
            report.findings.setdefault(step, []).append(Finding(
                "hub", f"weight file {path} has the same LFS sha256 ({sha[:12]}) as step{', step'.join(map(str, others))}'s"
            ))  # fmt: skip
    return report


def fetch_branch_listing(repo_id: str, token: str | None = None) -> dict[str, list[dict]]:
    """The listing `compare_branch_hashes` reads, from the Hub (one request per branch; needs the network)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    listing = {}
    for branch in api.list_repo_refs(repo_id).branches:
        entries = []
        for item in api.list_repo_tree(repo_id, revision=branch.name, expand=True):
            lfs = getattr(item, "lfs", None)
            entries.append({
                "type": "file" if hasattr(item, "size") and hasattr(item, "lfs") else "directory",
                "path": item.path, "size": getattr(item, "size", None),
                "lfs": {"oid": lfs.sha256, "size": lfs.size} if lfs is not None else None,
            })  # fmt: skip
        listing[branch.name] = entries
    return listing
