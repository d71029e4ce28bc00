"""Parsers and checkers for the deployment files (ray_cluster.yaml, infra/), used by test_infra.py.

Each checker returns a list of problems (empty = fine) so the tests can show that it finds a
planted problem, not only that the real files pass.
"""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
# Where infra/Dockerfile puts the repository (WORKDIR); paths under it map to repository paths.
IMAGE_ROOT = "/home/ray/maskgan"
PRIVATE_PORTS = (8265, 5000, 10001)  # Ray dashboard + job API, MLflow, Ray client

DOCKERFILE_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "aws_secret_access_key": re.compile(r"aws_secret_access_key", re.IGNORECASE),
    "password in a URI": re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^@\s/]+@", re.IGNORECASE),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    # PASSWORD=value / api_key: value with a literal value; a $VAR reference, a secretKeyRef or
    # --password-stdin is fine (the key name must end with the word).
    "inline secret value": re.compile(
        r"(?i)\b[\w-]*(?:secret|password|passwd|token|api[_-]?key)\s*[:=]\s*[\"']?(?![$\s{])[^\s\"'$]{6,}"
    ),
    # Kubernetes env entry {name: PGPASSWORD, value: literal} (flow or block style); valueFrom is fine.
    "inline secret env value": re.compile(
        r"(?i)name:\s*[\"']?[\w-]*(?:secret|password|passwd|token|api[_-]?key)[\"']?\s*[,\n]\s*"
        r"value:\s*[\"']?(?![$\s{])[^\s\"'$}]{6,}"
    ),
}


def deployment_files() -> list[Path]:
    """ray_cluster.yaml and every file under infra/."""
    return [ROOT / "ray_cluster.yaml", *sorted(p for p in INFRA.rglob("*") if p.is_file())]


def repo_path(path: str) -> Path:
    """An image path (/home/ray/maskgan/x) or a repository-relative path -> the repository file."""
    relative = path.removeprefix(IMAGE_ROOT).lstrip("/")
    return ROOT / relative


# ---------------------------------------------------------------- parsers


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with continuations joined and comments dropped."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    if pending:
        raise ValueError(f"Dockerfile ends inside a continuation: {pending!r}")
    return instructions


CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))  # minute hour day-of-month month day-of-week


def cron_field_problems(field: str, low: int, high: int) -> list[str]:
    """Problems of one cron time field ('*', '*/5', '1-5', '1,3', '30')."""
    problems = []
    for part in field.split(","):
        base, _, step = part.partition("/")
        if step and not step.isdigit():
            problems.append(f"bad step in {field!r}")
        if base == "*":
            continue
        for number in base.split("-"):
            if not number.isdigit() or not low <= int(number) <= high:
                problems.append(f"{number!r} in {field!r} is outside {low}-{high}")
    return problems


def crontab_entries(text: str) -> tuple[dict[str, str], list[tuple[list[str], str]]]:
    """({env name: value}, [(5 time fields, command)]); raises ValueError on a malformed line."""
    env, entries = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", stripped):
            name, _, value = stripped.partition("=")
            env[name.strip()] = value.strip()
            continue
        fields = stripped.split(None, 5)
        if len(fields) < 6:
            raise ValueError(f"crontab line {number}: 5 time fields and a command expected: {line!r}")
        problems = [
            p
            for f, (lo, hi) in zip(fields[:5], CRON_RANGES, strict=True)
            for p in cron_field_problems(f, lo, hi)
        ]
        if problems:
            raise ValueError(f"crontab line {number}: {problems}")
        entries.append((fields[:5], fields[5]))
    return env, entries


SHELL_OPERATORS = {"&&", "||", ";", "|", ">", ">>", "2>&1", "&"}


def shell_words(command: str, date: datetime.date | None = None) -> list[str]:
    """Words of a shell command line, with $(date +FMT) expanded the way the shell would."""
    date = date or datetime.date.today()
    expanded = re.sub(r"\$\(date \+([^)]*)\)", lambda m: date.strftime(m.group(1)), command)
    return shlex.split(expanded)


def split_submit(words: list[str]) -> tuple[list[str], list[str]]:
    """`... ray job submit ARGS -- ENTRYPOINT [> log]` -> (ARGS, ENTRYPOINT words)."""
    for i in range(len(words) - 2):
        if words[i : i + 3] == ["ray", "job", "submit"]:
            tail = words[i + 3 :]
            break
    else:
        raise ValueError(f"no `ray job submit` in {words}")
    if "--" not in tail:
        raise ValueError(f"`ray job submit` without `--` before the entrypoint: {tail}")
    cut = tail.index("--")
    return tail[:cut], entrypoint_words(tail[cut + 1 :])


def entrypoint_words(words: list[str]) -> list[str]:
    """The words up to the first shell operator or redirection."""
    out = []
    for word in words:
        if word in SHELL_OPERATORS or word.startswith(">") or word.startswith("2>"):
            break
        out.append(word)
    return out


# ---------------------------------------------------------------- checkers


def entrypoint_problems(words: list[str], pending_flags: set[str]) -> list[str]:
    """`python pipelines/X.py ARGS`: the file exists, its parser accepts ARGS, --preset is a real preset.

    Flags in pending_flags may be unknown to the parser (announced, not built yet); they are taken
    as switches without a value and ignored.
    """
    if len(words) < 2 or not re.fullmatch(r"python3?", words[0]):
        return [f"entrypoint must start with `python pipelines/<name>.py`: {words}"]
    path = repo_path(words[1])
    if not (path.is_file() and path.parent == ROOT / "pipelines"):
        return [f"entrypoint {words[1]} is not a file in pipelines/"]
    spec = importlib.util.spec_from_file_location(f"infra_check_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = module.build_parser()
    known = set(parser._option_string_actions)
    arguments = words[2:]
    flags = {word.split("=", 1)[0] for word in arguments if word.startswith("--")}
    unknown = flags - known
    if unknown - pending_flags:
        return [f"{words[1]} has no flags {sorted(unknown - pending_flags)}"]
    arguments = [word for word in arguments if word not in unknown]
    try:
        parsed = parser.parse_args(arguments)
    except SystemExit:
        return [f"{words[1]} rejects {arguments} (see stderr)"]
    if "--preset" not in flags:
        return [f"{words[1]}: name the preset explicitly (--preset)"]
    if parsed.preset not in module.PRESETS:
        return [f"{words[1]}: preset {parsed.preset!r} not in {sorted(module.PRESETS)}"]
    return []


def secret_problems(text: str) -> list[str]:
    """Inline credentials: key ids, secret keys, passwords in URIs or assignments, private keys."""
    return [
        f"{name}: {match.group(0)[:40]!r}"
        for name, pattern in SECRET_PATTERNS.items()
        for match in pattern.finditer(text)
    ]


def _covers(rule: dict, port: int) -> bool:
    if str(rule.get("IpProtocol")) == "-1":
        return True
    return int(rule.get("FromPort", -1)) <= port <= int(rule.get("ToPort", -1))


def security_group_problems(ip_permissions: list[dict]) -> list[str]:
    """Rules that open 8265/5000/10001 to anything but private (VPC) address ranges."""
    problems = []
    for rule in ip_permissions:
        for port in PRIVATE_PORTS:
            if not _covers(rule, port):
                continue
            cidrs = [r["CidrIp"] for r in rule.get("IpRanges", [])]
            cidrs += [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]
            for cidr in cidrs:
                network = ipaddress.ip_network(cidr, strict=False)
                if network.prefixlen == 0 or not network.is_private:
                    problems.append(f"port {port} open to {cidr}")
    return problems


def kubernetes_exposure_problems(documents: list) -> list[str]:
    """Anything that exposes a pod outside the cluster: LoadBalancer/NodePort, Ingress, hostPort."""
    problems = []

    def walk(node, where):
        if isinstance(node, dict):
            if node.get("kind") == "Ingress":
                problems.append(f"{where}: Ingress")
            service_type = node.get("spec", {}).get("type") if node.get("kind") == "Service" else None
            if service_type in ("LoadBalancer", "NodePort"):
                problems.append(f"{where}: Service of type {service_type}")
            if node.get("serviceType") not in (None, "ClusterIP"):
                problems.append(f"{where}: serviceType {node['serviceType']}")
            if "hostPort" in node or node.get("hostNetwork") is True:
                problems.append(f"{where}: hostPort/hostNetwork")
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    for i, document in enumerate(documents):
        walk(document, f"document {i}")
    return problems
