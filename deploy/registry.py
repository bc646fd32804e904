"""Whether an image tag exists in its registry, asked over the Registry HTTP API v2.

Deploy never points a RunPod endpoint at an image it cannot vouch for; when the image is not
pushed in this run, :class:`Registry` asks the registry itself. Key rule: only a 200 to the
manifest HEAD counts as "found"; every other answer (missing, private, no network) is a reason
the caller refuses to publish, never an exception, and each request has a timeout so a check
cannot hang a deploy.
"""

from __future__ import annotations

import re

import httpx

# Each registry request (manifest HEAD, token): a check must not hang a deploy.
REGISTRY_TIMEOUT_S = 5.0  # seconds
DOCKER_HUB = "registry-1.docker.io"  # where docker.io/<user>/<repo> is served
# A manifest HEAD names every manifest kind it accepts, or the registry may answer 404
# for a multi-platform index.
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def split_image_ref(ref: str) -> tuple[str, str, str]:
    """``registry host, repository, tag or digest`` of an image reference, as docker reads
    it: a first component with a dot or a port (or ``localhost``) is the registry, else
    Docker Hub; Docker Hub's one-part names live under ``library/``."""
    name, _, digest = ref.partition("@")
    tag = "latest"
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, repository = first, rest
    else:
        host, repository = "docker.io", name
    if host in {"docker.io", "index.docker.io"}:
        host = DOCKER_HUB
        repository = repository if "/" in repository else f"library/{repository}"
    return host, repository, digest or tag


def manifest_url(ref: str) -> str:
    """The Registry HTTP API v2 URL whose HEAD says whether ``ref`` was pushed."""
    host, repository, reference = split_image_ref(ref)
    local = host.split(":")[0] in {"localhost", "127.0.0.1"}  # docker allows plain HTTP there
    return f"{'http' if local else 'https'}://{host}/v2/{repository}/manifests/{reference}"


class Registry:
    """Asks an image registry whether a tag exists: the Registry HTTP API v2 manifest HEAD,
    with the anonymous bearer token the registry's 401 points to (Docker Hub, GHCR, ...).

    Answers "found", "missing", or why it cannot tell (a private repository, no network):
    deploy publishes only on "found". Tests pass an ``httpx.MockTransport``.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None):
        self._transport = transport

    def check(self, ref: str) -> str:
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        url = manifest_url(ref)
        try:
            with httpx.Client(
                transport=self._transport, timeout=REGISTRY_TIMEOUT_S, follow_redirects=True
            ) as client:
                answer = client.head(url, headers=headers)
                if answer.status_code == 401 and (token := self._token(client, answer)):
                    answer = client.head(url, headers={**headers, "Authorization": token})
        except httpx.HTTPError as exc:
            return f"the registry did not answer ({type(exc).__name__})"
        if answer.status_code == 200:
            return "found"
        if answer.status_code == 404:
            return "missing"
        if answer.status_code in {401, 403}:  # private, or (Docker Hub) a repository not there
            return "the registry wants credentials for it (or the repository does not exist)"
        return f"the registry answered {answer.status_code}"

    @staticmethod
    def _token(client: httpx.Client, challenge: httpx.Response) -> str | None:
        """An anonymous pull token from the realm in ``WWW-Authenticate: Bearer ...``."""
        scheme, _, params = challenge.headers.get("www-authenticate", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.pop("realm", "")
        if not realm.startswith(("https://", "http://")):
            return None
        answer = client.get(realm, params=fields)
        if answer.status_code != 200:
            return None
        try:
            body = answer.json()
        except ValueError:
            return None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        return f"Bearer {token}" if isinstance(token, str) and token else None
