"""Hostile uploads: each gets a 4xx problem with a stable code, or is accepted with the bad members
listed in the report; in every case nothing is stored outside the dataset's own prefix."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ApiEnv, Tenant
from tests.api.factories import (
    bomb_png,
    lying_zip,
    make_zip,
    png,
    set_flags,
    symlink_info,
    upload,
    zeros_zip,
)

GOOD = ("good.png", png())


def _rejections(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    report = body["report"]
    return {r["file"]: r["code"] for r in report["rejected"]}


def _assert_contained(env: ApiEnv, tenant: Tenant, before: list[str], response: httpx.Response) -> None:
    """Every object the upload created is under ``tenants/<tenant>/datasets/<its id>/``."""
    new = sorted(set(env.all_keys()) - set(before))
    if response.status_code == 201:
        prefix = f"tenants/{tenant.id}/datasets/{response.json()['id']}/"
        assert new and all(key.startswith(prefix) for key in new), new
    else:
        assert new == [], new


def _post(env: ApiEnv, tenant: Tenant, **kwargs: object) -> httpx.Response:
    before = env.all_keys()
    response = upload(env.client, tenant.headers, **kwargs)  # type: ignore[arg-type]
    assert 400 <= response.status_code < 500 or response.status_code == 201, response.text
    _assert_contained(env, tenant, before, response)
    return response


MEMBER_CASES: list[tuple[str, Callable[[], list[tuple[str, bytes]]], str, str]] = [
    ("zip slip", lambda: [("../../etc/evil.png", png())], "../../etc/evil.png", "unsafe_path"),
    ("zip slip inside", lambda: [("a/../../evil.png", png())], "a/../../evil.png", "unsafe_path"),
    ("absolute", lambda: [("/etc/evil.png", png())], "/etc/evil.png", "unsafe_path"),
    ("windows absolute", lambda: [("C:\\evil.png", png())], "C:\\evil.png", "unsafe_path"),
    ("backslash slip", lambda: [("..\\..\\evil.png", png())], "..\\..\\evil.png", "unsafe_path"),
    ("truncated png", lambda: [("half.png", png(256, 256)[:300])], "half.png", "undecodable"),
    ("zero bytes", lambda: [("empty.png", b"")], "empty.png", "empty_file"),
    ("text named png", lambda: [("fake.png", b"hello, I am text")], "fake.png", "not_an_image"),
    ("decompression bomb png", lambda: [("bomb.png", bomb_png())], "bomb.png", "decompression_bomb"),
    ("nested zip", lambda: [("inner.zip", make_zip([("x.png", png())]))], "inner.zip", "nested_archive"),
    ("control chars", lambda: [("bad\x01name.png", png())], "bad\\x01name.png", "invalid_name"),
    ("too small", lambda: [("tiny.png", png(8, 8))], "tiny.png", "too_small"),
    (
        "deep folders",
        lambda: [("/".join(["d"] * 40) + "/deep.png", png())],
        "/".join(["d"] * 40) + "/deep.png",
        "path_too_deep",
    ),
]


@pytest.mark.parametrize(("label", "members", "file", "code"), MEMBER_CASES, ids=[c[0] for c in MEMBER_CASES])
def test_bad_member_beside_a_good_image_is_listed(
    any_env: ApiEnv, label: str, members: Callable[[], list[tuple[str, bytes]]], file: str, code: str
) -> None:
    tenant = any_env.tenant()
    r = _post(any_env, tenant, archive=make_zip([GOOD, *members()]))
    assert r.status_code == 201, r.text
    assert r.json()["image_count"] == 1
    assert _rejections(r) == {file: code}


@pytest.mark.parametrize(("label", "members", "file", "code"), MEMBER_CASES, ids=[c[0] for c in MEMBER_CASES])
def test_bad_member_alone_makes_an_invalid_dataset(
    api_env: ApiEnv, label: str, members: Callable[[], list[tuple[str, bytes]]], file: str, code: str
) -> None:
    tenant = api_env.tenant()
    r = _post(api_env, tenant, archive=make_zip(members()))
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "dataset_invalid"
    assert {x["file"]: x["code"] for x in body["report"]["rejected"]} == {file: code}
    # Recorded as invalid with its report, so the client can look at it later; nothing stored.
    got = api_env.client.get(f"/v1/datasets/{body['dataset_id']}", headers=tenant.headers).json()
    assert got["status"] == "invalid" and got["image_count"] == 0 and got["sha256"] is None


def test_symlink_and_encrypted_members_are_rejected(any_env: ApiEnv) -> None:
    tenant = any_env.tenant()
    link = symlink_info("link.png")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(GOOD[0], GOOD[1])
        zf.writestr(link, "/etc/passwd")
        zf.writestr("secret.png", png())
    r = _post(any_env, tenant, archive=set_flags(buf.getvalue(), "secret.png", 0x1))
    assert r.status_code == 201
    assert _rejections(r) == {"link.png": "symlink", "secret.png": "encrypted"}


def test_zip_bomb_with_lying_headers_is_rejected_quickly(any_env: ApiEnv) -> None:
    """80 MiB of zeros whose headers claim 1000 bytes: read stops at the claim and the CRC fails."""
    tenant = any_env.tenant()
    r = _post(any_env, tenant, archive=lying_zip("bomb.png", 80 * 1024 * 1024, 1000))
    assert r.status_code == 422
    assert {x["code"] for x in r.json()["report"]["rejected"]} == {"corrupt_member"}


def test_honest_zip_bomb_is_rejected_by_its_ratio_without_inflating(api_env: ApiEnv) -> None:
    tenant = api_env.tenant()
    r = _post(api_env, tenant, archive=zeros_zip("bomb.png", 48 * 1024 * 1024))
    assert r.status_code == 422
    assert _rejections(r) == {"bomb.png": "compression_ratio"}


def test_member_larger_than_the_cap_is_rejected_by_its_header(api_env: ApiEnv) -> None:
    settings = api_env.settings
    assert settings.archive_max_member_bytes == 64 * 1024 * 1024
    tenant = api_env.tenant()
    r = _post(api_env, tenant, archive=lying_zip("huge.png", 1024 * 1024, 2**31))
    assert r.status_code == 422
    assert _rejections(r) == {"huge.png": "member_too_large"}


def test_total_uncompressed_cap_holds(api_env: ApiEnv) -> None:
    """With a small total cap, an archive of individually fine members over it is a 413."""
    app = api_env.client.app
    app.state.settings = api_env.settings.model_copy(update={"archive_max_total_bytes": 200_000})  # type: ignore[attr-defined]
    tenant = api_env.tenant()
    members = [(f"img{i}.png", png(128, 128, (i, 0, 0)) + b"\x00" * 60_000) for i in range(5)]
    r = _post(api_env, tenant, archive=make_zip(members))
    assert r.status_code == 413
    assert r.json()["code"] == "archive_too_large"


def test_thousands_of_tiny_files_are_judged_and_listed(api_env: ApiEnv) -> None:
    tenant = api_env.tenant()
    tiny = png(4, 4)
    members = [(f"t/{i:05d}.png", tiny) for i in range(3000)]
    r = _post(api_env, tenant, archive=make_zip([GOOD, *members]))
    assert r.status_code == 201
    report = r.json()["report"]
    assert report["accepted"] == 1
    assert report["rejected_total"] == 3000
    assert len(report["rejected"]) == 1000 and {x["code"] for x in report["rejected"]} == {"too_small"}


def test_too_many_members_is_a_413_before_reading_them(api_env: ApiEnv) -> None:
    app = api_env.client.app
    app.state.settings = api_env.settings.model_copy(update={"archive_max_members": 100})  # type: ignore[attr-defined]
    tenant = api_env.tenant()
    r = _post(api_env, tenant, archive=make_zip([(f"{i}.txt", b"") for i in range(101)]))
    assert r.status_code == 413
    assert r.json()["code"] == "too_many_members"


def test_too_many_loose_files_is_a_413(api_env: ApiEnv) -> None:
    app = api_env.client.app
    app.state.settings = api_env.settings.model_copy(update={"max_upload_files": 3})  # type: ignore[attr-defined]
    tenant = api_env.tenant()
    r = _post(api_env, tenant, files=[(f"{i}.png", png()) for i in range(4)])
    assert r.status_code == 413
    assert r.json()["code"] == "too_many_files"


def test_duplicate_names_keep_the_first(any_env: ApiEnv) -> None:
    tenant = any_env.tenant()
    r = _post(any_env, tenant, files=[("a.png", png()), ("a.png", png(color=(0, 0, 0))), ("./a.png", png())])
    assert r.status_code == 201
    body = r.json()
    assert body["image_count"] == 1
    assert [x["code"] for x in body["report"]["rejected"]] == ["duplicate_name", "duplicate_name"]


def test_hostile_loose_file_names_are_only_names(any_env: ApiEnv) -> None:
    tenant = any_env.tenant()
    r = _post(any_env, tenant, files=[GOOD, ("../../../../tmp/evil.png", png()), ("/etc/x.png", png())])
    assert r.status_code == 201
    assert _rejections(r) == {"../../../../tmp/evil.png": "unsafe_path", "/etc/x.png": "unsafe_path"}


def test_nul_and_control_characters_never_reach_the_database(any_env: ApiEnv) -> None:
    """Postgres cannot store NUL in text or JSONB: names are escaped in reports, fields refused."""
    tenant = any_env.tenant()
    parts = [GOOD, ("nul\x00name.png", png()), ("esc\x1b[31m.png", png())]
    body = b"".join(
        b'--b0undary\r\nContent-Disposition: form-data; name="files"; filename="'
        + name.encode()
        + b'"\r\nContent-Type: image/png\r\n\r\n'
        + data
        + b"\r\n"
        for name, data in parts
    )
    r = any_env.client.post(  # raw bytes: httpx would percent-encode the control characters
        "/v1/datasets",
        content=body + b"--b0undary--\r\n",
        headers={**tenant.headers, "Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert r.status_code == 201, r.text
    assert _rejections(r) == {"nul\\x00name.png": "invalid_name", "esc\\x1b[31m.png": "invalid_name"}
    bad_field = _post(any_env, tenant, files=[GOOD], end_user_id="user\x00")
    assert bad_field.status_code == 422 and bad_field.json()["errors"][0]["pointer"] == "/end_user_id"
    listed = any_env.client.get("/v1/datasets", params={"end_user_id": "u\x00"}, headers=tenant.headers)
    assert listed.status_code == 422


def test_not_a_zip_is_a_422(any_env: ApiEnv) -> None:
    tenant = any_env.tenant()
    r = _post(any_env, tenant, archive=png())
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "invalid_archive"
    assert body["errors"][0]["pointer"] == "/archive"


def test_truncated_zip_is_a_422(any_env: ApiEnv) -> None:
    tenant = any_env.tenant()
    archive = make_zip([GOOD, ("b.png", png())])
    r = _post(any_env, tenant, archive=archive[: len(archive) // 2])
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_archive"


def test_overlapping_entries_are_refused(api_env: ApiEnv) -> None:
    """Two central directory entries pointing at one stored file (the overlapping-zip-bomb trick)."""
    tenant = api_env.tenant()
    data = bytearray(make_zip([("a.png", png()), ("b.png", png())]))
    eocd = data.rfind(b"PK\x05\x06")
    cd_offset = int.from_bytes(data[eocd + 16 : eocd + 20], "little")
    second = data.find(b"PK\x01\x02", cd_offset + 4)
    data[second + 42 : second + 46] = (0).to_bytes(4, "little")  # its local header offset := the first's
    r = _post(api_env, tenant, archive=bytes(data))
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_archive"


def test_body_over_the_upload_limit_is_a_413(api_env: ApiEnv) -> None:
    app = api_env.client.app
    # The limit is read when the app is built; rebuild the middleware's view through a new app.
    from api.app import create_app

    small = api_env.settings.model_copy(update={"max_upload_bytes": 4096})
    limited = create_app(small, database=api_env.database, store=api_env.store)
    assert app is not limited
    from fastapi.testclient import TestClient

    tenant = api_env.tenant()
    with TestClient(limited) as client:
        before = api_env.all_keys()
        r = upload(client, tenant.headers, files=[("a.png", png(256, 256, (1, 2, 3)) + b"\x00" * 8192)])
        assert r.status_code == 413
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "payload_too_large"
        assert api_env.all_keys() == before


def test_malformed_multipart_is_a_400(api_env: ApiEnv) -> None:
    tenant = api_env.tenant()
    body = b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\nabc'
    r = api_env.client.post(
        "/v1/datasets",
        headers={**tenant.headers, "Content-Type": "multipart/form-data; boundary=xyz"},
        content=body,
    )
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_multipart"


def test_spooled_and_temporary_files_are_removed(local_env: ApiEnv, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    app = local_env.client.app
    app.state.settings = local_env.settings.model_copy(update={"upload_tmp_dir": spool})  # type: ignore[attr-defined]
    tenant = local_env.tenant()
    assert _post(local_env, tenant, archive=make_zip([GOOD])).status_code == 201
    assert _post(local_env, tenant, archive=make_zip([("x.png", b"nope")])).status_code == 422
    assert _post(local_env, tenant, archive=b"not a zip").status_code == 422
    assert spool.is_dir() and list(spool.iterdir()) == []
