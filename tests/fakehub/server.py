"""A FAKE Hugging Face Hub on 127.0.0.1, for download tests (this machine cannot reach the real one).

It speaks the endpoints the installed huggingface_hub and Ember use, with the
real hub's shapes (read from huggingface_hub's file_download.py / hf_api.py):

- ``GET /api/models/{repo}[/revision/{rev}]?blobs=true``: model info with
  ``sha`` and ``siblings`` (``rfilename``, ``size``, ``blobId``, ``lfs``
  {``sha256``, ``size``, ``pointerSize``}).
- ``POST /api/models/{repo}/paths-info/{rev}`` and ``GET .../tree/{rev}``.
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``: ``ETag``, ``X-Repo-Commit``,
  ``Content-Length``, ``Accept-Ranges``; LFS files answer 302 with
  ``X-Linked-Size`` / ``X-Linked-Etag`` and a ``Location`` on the "CDN"
  (``/cdn/...``), which honours ``Range`` (206 + ``Content-Range``).
- Gated repos: 403 with ``X-Error-Code: GatedRepo``.

No Xet headers are sent, so downloads stay plain HTTP. Per file it can
throttle (bytes/s), corrupt one byte of what it serves, and it counts the
bytes of file content it sent (``served``).

A repository marked ``anywhere`` plays a hostile mirror (issue 14): its
metadata may hold any file name, commit or checksum, and it serves a file's
bytes at any URL that ends with the file's last name part, so a client that
follows a ``../`` name (which HTTP clients fold away) still gets the bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class HubFile:
    path: Path                       # the bytes served
    lfs: bool = True
    sha256: str | None = None        # what the metadata claims (default: the real one)
    corrupt_at: int | None = None    # flip this byte while serving
    throttle_bps: int | None = None

    def __post_init__(self):
        self.size = self.path.stat().st_size
        self.real_sha256 = self.sha256_real()
        if self.sha256 is None:
            self.sha256 = self.real_sha256

    def sha256_real(self) -> str:
        return sha256_of(self.path)

    @property
    def blob_id(self) -> str:
        h = hashlib.sha1()
        h.update(b"blob %d\0" % self.size)
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()


@dataclass
class HubRepo:
    files: dict[str, HubFile]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    anywhere: bool = False   # hostile: serve the bytes at any URL ending in the file's last name part


@dataclass
class FakeHub:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)   # "repo/file" -> content bytes sent
    requests: list[str] = field(default_factory=list)

    def add(self, repo: str, filename: str, path: Path, **kw) -> HubFile:
        f = HubFile(Path(path), **kw)
        self.repos.setdefault(repo, HubRepo({})).files[filename] = f
        return f

    def add_catalog(self, name: str, path: Path, **kw) -> HubFile:
        """Serve ``path`` as the file of the catalog variant ``name`` (its real repository and file name)."""
        from engines.models import catalog
        spec = catalog.resolve(name)
        assert spec.repo and len(spec.files) == 1, f"{name} is not a one-file catalog variant"
        return self.add(spec.repo, spec.files[0], path, **kw)

    def environ(self, cache: Path) -> dict[str, str]:
        """The environment that points huggingface_hub and Ember at this hub, with downloads under ``cache``."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(Path(cache).parent / "hf-home")}

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass
        Handler.hub = hub
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset_counts(self) -> None:
        self.served.clear()
        self.requests.clear()


_API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?/?$")
_PATHS = re.compile(r"^/api/models/([^/]+/[^/]+)/(paths-info|tree)/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN = re.compile(r"^/cdn/([^/]+/[^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _json(self, status: int, data, headers: dict | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _gated(self, repo: str) -> None:
        self._json(403, {"error": f"Access to model {repo} is restricted and you are not in the authorized list. "
                                  f"Visit https://huggingface.co/{repo} to ask for access."},
                   {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"})

    def _repo(self, repo: str) -> HubRepo | None:
        r = self.hub.repos.get(repo)
        if r is None:
            self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return None
        if r.gated and not self.headers.get("Authorization"):
            self._gated(repo)
            return None
        return r

    @staticmethod
    def _sibling(name: str, f: HubFile) -> dict:
        d = {"rfilename": name, "size": f.size, "blobId": f.blob_id}
        if f.lfs:
            d["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
        return d

    @staticmethod
    def _entry(name: str, f: HubFile) -> dict:
        d = {"type": "file", "oid": f.blob_id, "size": f.size, "path": name}
        if f.lfs:
            d["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        return d

    def do_GET(self):
        self._route()

    def do_HEAD(self):
        self._route()

    def do_POST(self):
        self._route()

    def _route(self):
        u = urlparse(self.path)
        path = unquote(u.path)
        self.hub.requests.append(f"{self.command} {self.path}")
        if m := _API.match(path):
            r = self._repo(m[1])
            if r:
                self._json(200, {"id": m[1], "modelId": m[1], "sha": r.commit, "private": False,
                                 "gated": "manual" if r.gated else False,
                                 "siblings": [self._sibling(n, f) for n, f in r.files.items()]})
            return
        if m := _PATHS.match(path):
            r = self._repo(m[1])
            if not r:
                return
            if m[2] == "paths-info":
                n = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(n).decode()) if n else {}
                wanted = form.get("paths", list(r.files))
                self._json(200, [self._entry(p, r.files[p]) for p in wanted if p in r.files])
            else:
                self._json(200, [self._entry(n, f) for n, f in r.files.items()])
            return
        if m := _RESOLVE.match(path):
            repo, _rev, name = m[1], m[2], m[3]
            r = self._repo(repo)
            if not r:
                return
            f = r.files.get(name)
            if f is None:
                self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                return
            if f.lfs:  # like the hub: LFS files redirect to the CDN, metadata in X-Linked-*
                self.send_response(302)
                # another host name for the same server, so clients treat it as the CDN (no auth header, no more follows)
                port = self.server.server_address[1]
                self.send_header("Location", f"http://localhost:{port}/cdn/{repo}/{name}")
                self.send_header("ETag", f'"{f.blob_id}"')
                self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                self.send_header("X-Linked-Size", str(f.size))
                self.send_header("X-Repo-Commit", r.commit)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send_file(repo, name, f, {"ETag": f'"{f.blob_id}"', "X-Repo-Commit": r.commit})
            return
        if m := _CDN.match(path):
            r = self.hub.repos.get(m[1])
            f = r.files.get(m[2]) if r else None
            if f is None:
                self._json(404, {"error": "not found"})
                return
            self._send_file(m[1], m[2], f, {"ETag": f'"{f.sha256}"'})
            return
        for repo, r in self.hub.repos.items():
            for name, f in r.files.items() if r.anywhere else ():
                if path.endswith("/" + name.replace("\\", "/").rsplit("/", 1)[-1]):
                    self._send_file(repo, name, f, {"ETag": f'"{f.sha256}"'})
                    return
        self._json(404, {"error": f"the fake hub does not serve {path}"})

    def _send_file(self, repo: str, name: str, f: HubFile, headers: dict) -> None:
        start, end = 0, f.size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng and (m := re.match(r"bytes=(\d+)-(\d*)$", rng.strip())):
            start = int(m[1])
            end = int(m[2]) if m[2] else f.size - 1
            if start >= f.size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{f.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            end = min(end, f.size - 1)
            status = 206
        length = end - start + 1
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{f.size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        key = f"{repo}/{name}"
        chunk = 256 * 1024
        t0 = time.monotonic()
        sent = 0
        with open(f.path, "rb") as fh:
            fh.seek(start)
            pos = start
            while sent < length:
                data = fh.read(min(chunk, length - sent))
                if not data:
                    break
                if f.corrupt_at is not None and pos <= f.corrupt_at < pos + len(data):
                    b = bytearray(data)
                    b[f.corrupt_at - pos] ^= 0xFF
                    data = bytes(b)
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    return
                sent += len(data)
                pos += len(data)
                self.hub.served[key] = self.hub.served.get(key, 0) + len(data)
                if f.throttle_bps:
                    ahead = sent / f.throttle_bps - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)


def main() -> None:  # python -m tests.fakehub.server REPO FILE PATH  (for trying it by hand)
    import sys
    hub = FakeHub()
    args = sys.argv[1:]
    for i in range(0, len(args), 3):
        hub.add(args[i], args[i + 1], Path(args[i + 2]))
    hub.start()
    print(hub.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
