"""Dataset uploads that should work, listing, fetching, deleting, and tenant isolation (both modes)."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest

from api.db.models import BaseModelRecord, Job
from api.db.repositories import DatasetRepository, JobRepository
from api.storage import ObjectStore
from core.data.validate import scan_zip
from tests.api.conftest import ApiEnv
from tests.api.factories import cmyk_jpeg, jpeg, make_zip, png, png16, upload


def _stored_archive(env: ApiEnv, dataset_id: str) -> zipfile.ZipFile:
    with env.session() as session:
        row = DatasetRepository(session).get(dataset_id)
        assert row is not None
        prefix = row.storage_prefix
    store: ObjectStore = env.store
    data = b"".join(store.iter_bytes(prefix + "dataset.zip"))
    return zipfile.ZipFile(io.BytesIO(data))


def test_zip_upload_is_validated_stored_and_readable_by_core(any_env: ApiEnv, tmp_path) -> None:
    tenant = any_env.tenant()
    archive = make_zip(
        [
            ("inkwash/001-cat.png", png(color=(10, 10, 10))),
            ("inkwash/001-cat.txt", b"a cat, ink wash\n"),
            ("inkwash/dog.jpg", jpeg()),
            ("inkwash/dog.txt", b"a dog"),
            ("inkwash/readme.md", b"# not an image"),
        ]
    )
    r = upload(any_env.client, tenant.headers, archive=archive, name="inkwash", end_user_id="user_42")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("ds_")
    assert body["status"] == "ready"
    assert body["name"] == "inkwash" and body["end_user_id"] == "user_42"
    assert body["image_count"] == 2 and body["caption_count"] == 2
    report = body["report"]
    assert report["accepted"] == 2
    assert report["rejected"] == [
        {
            "file": "inkwash/readme.md",
            "code": "not_an_image",
            "detail": "the content is not a recognised image",
        }
    ]
    assert report["sizes"] == {"96x96": 1, "96x80": 1}
    assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")

    stored = _stored_archive(any_env, body["id"])
    assert sorted(stored.namelist()) == [
        "inkwash/001-cat.png",
        "inkwash/001-cat.txt",
        "inkwash/dog.jpg",
        "inkwash/dog.txt",
    ]
    assert stored.read("inkwash/001-cat.txt") == b"a cat, ink wash"
    # What the worker will do with it: core's own scanner reads the stored archive the same way.
    path = tmp_path / "dataset.zip"
    path.write_bytes(
        b"".join(any_env.store.iter_bytes(f"tenants/{tenant.id}/datasets/{body['id']}/dataset.zip"))
    )
    items, core_report = scan_zip(path)
    assert sorted(i.caption for i in items) == ["a cat, ink wash", "a dog"]
    assert core_report.accepted == 2
    assert body["bytes"] == path.stat().st_size


def test_loose_files_pair_captions_by_base_name(any_env: ApiEnv) -> None:
    tenant = any_env.tenant()
    r = upload(
        any_env.client,
        tenant.headers,
        files=[("a.png", png()), ("a.txt", b"first"), ("b.png", png(color=(1, 2, 3))), ("orphan.txt", b"x")],
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["image_count"] == 2 and body["caption_count"] == 1
    assert body["name"] == "dataset"
    warnings = {w["code"]: w for w in body["report"]["warnings"]}
    assert warnings["unpaired_caption"]["files"] == ["orphan.txt"]


def test_caption_source_filename_uses_names_and_drops_txt(api_env: ApiEnv) -> None:
    tenant = api_env.tenant()
    archive = make_zip([("00012-0-a red fox.png", png()), ("00012-0-a red fox.txt", b"ignored caption")])
    r = upload(api_env.client, tenant.headers, archive=archive, caption_source="filename")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["caption_count"] == 0
    assert body["report"]["caption_source"] == "filename"
    assert {w["code"] for w in body["report"]["warnings"]} >= {"caption_file_unused"}
    assert _stored_archive(api_env, body["id"]).namelist() == ["00012-0-a red fox.png"]


def test_odd_but_legitimate_uploads_are_accepted(any_env: ApiEnv) -> None:
    """Chinese names and captions, CMYK and 16-bit images, __MACOSX and .DS_Store junk beside them."""
    tenant = any_env.tenant()
    archive = make_zip(
        [
            ("水墨/山水画.png", png(color=(0, 90, 0))),
            ("水墨/山水画.txt", "水墨山水, 远山, 薄雾".encode()),
            ("水墨/印刷.jpg", cmyk_jpeg()),
            ("水墨/深度.png", png16()),
            ("__MACOSX/水墨/._山水画.png", b"\x00\x05\x16\x07appledouble"),
            ("水墨/.DS_Store", b"Bud1\x00\x00"),
            ("Thumbs.db", b"\xd0\xcf\x11\xe0"),
        ]
    )
    r = upload(any_env.client, tenant.headers, archive=archive, archive_name="水墨.zip")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "水墨"
    assert body["image_count"] == 3 and body["report"]["rejected"] == []
    assert len(body["report"]["ignored"]) == 3
    stored = _stored_archive(any_env, body["id"])
    assert "水墨/山水画.png" in stored.namelist()
    assert stored.read("水墨/山水画.txt").decode() == "水墨山水, 远山, 薄雾"


def test_unicode_file_names_in_loose_files(any_env: ApiEnv) -> None:
    tenant = any_env.tenant()
    r = upload(any_env.client, tenant.headers, files=[("猫.png", png()), ("猫.txt", "一只猫".encode())])
    assert r.status_code == 201, r.text
    assert r.json()["caption_count"] == 1


def test_utf8_names_without_the_utf8_flag_are_read_as_utf8(api_env: ApiEnv) -> None:
    """Many zip tools write UTF-8 names without flag 0x800; zipfile would show mojibake."""
    tenant = api_env.tenant()
    data = bytearray(make_zip([("猫.png", png())]))
    cd_offset = struct.unpack("<I", data[data.rfind(b"PK\x05\x06") + 16 :][:4])[0]
    for flag_at in (6, cd_offset + 8):  # general purpose flags of the local and central headers
        flags = struct.unpack("<H", data[flag_at : flag_at + 2])[0]
        assert flags & 0x800
        data[flag_at : flag_at + 2] = struct.pack("<H", flags & ~0x800)
    assert zipfile.ZipFile(io.BytesIO(bytes(data))).namelist() != ["猫.png"]  # zipfile alone: mojibake
    r = upload(api_env.client, tenant.headers, archive=bytes(data))
    assert r.status_code == 201, r.text
    assert _stored_archive(api_env, r.json()["id"]).namelist() == ["猫.png"]


def test_equal_uploads_store_equal_archives(api_env: ApiEnv) -> None:
    tenant = api_env.tenant()
    archive = make_zip([("a.png", png()), ("a.txt", b"cap")])
    first = upload(api_env.client, tenant.headers, archive=archive).json()
    second = upload(api_env.client, tenant.headers, archive=archive).json()
    assert first["id"] != second["id"]
    assert first["sha256"] == second["sha256"] and len(first["sha256"]) == 64


def test_list_paginates_newest_first_and_filters(any_env: ApiEnv) -> None:
    tenant = any_env.tenant()
    ids = []
    for i in range(3):
        r = upload(
            any_env.client, tenant.headers, files=[("a.png", png())], name=f"d{i}", end_user_id=f"u{i % 2}"
        )
        ids.append(r.json()["id"])
    page1 = any_env.client.get("/v1/datasets?limit=2", headers=tenant.headers).json()
    assert [d["id"] for d in page1["data"]] == ids[::-1][:2]
    assert page1["has_more"] is True and page1["next_cursor"]
    page2 = any_env.client.get(
        f"/v1/datasets?limit=2&after={page1['next_cursor']}", headers=tenant.headers
    ).json()
    assert [d["id"] for d in page2["data"]] == [ids[0]]
    assert page2["has_more"] is False and page2["next_cursor"] is None
    filtered = any_env.client.get("/v1/datasets?end_user_id=u1", headers=tenant.headers).json()
    assert [d["id"] for d in filtered["data"]] == [ids[1]]


def test_bad_cursor_is_a_422_with_a_pointer(api_env: ApiEnv) -> None:
    tenant = api_env.tenant()
    r = api_env.client.get("/v1/datasets?after=not-a-cursor", headers=tenant.headers)
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_cursor"


def test_get_and_delete(any_env: ApiEnv) -> None:
    tenant = any_env.tenant()
    created = upload(any_env.client, tenant.headers, files=[("a.png", png())]).json()
    prefix = f"tenants/{tenant.id}/datasets/{created['id']}/"
    got = any_env.client.get(f"/v1/datasets/{created['id']}", headers=tenant.headers)
    assert got.status_code == 200 and got.json() == created
    assert any(k.startswith(prefix) for k in any_env.all_keys())
    deleted = any_env.client.delete(f"/v1/datasets/{created['id']}", headers=tenant.headers)
    assert deleted.status_code == 204 and deleted.content == b""
    assert any_env.client.get(f"/v1/datasets/{created['id']}", headers=tenant.headers).status_code == 404
    assert any_env.client.delete(f"/v1/datasets/{created['id']}", headers=tenant.headers).status_code == 404
    assert not any(k.startswith(prefix) for k in any_env.all_keys())
    listed = any_env.client.get("/v1/datasets", headers=tenant.headers).json()
    assert listed["data"] == []


@pytest.mark.parametrize("status", ["queued", "running", "cancelling"])
def test_delete_is_refused_while_a_live_job_uses_the_dataset(api_env: ApiEnv, status: str) -> None:
    tenant = api_env.tenant()
    dataset = upload(api_env.client, tenant.headers, files=[("a.png", png())]).json()
    with api_env.session() as session:
        model = BaseModelRecord(name="sd15", arch="sd1", format="diffusers", uri="/m", sha256_short=None)
        session.add(model)
        session.flush()
        job = JobRepository(session).add(
            Job(
                tenant_id=tenant.id,
                name="j",
                dataset_id=dataset["id"],
                base_model_id=model.id,
                spec={},
                status=status,
            )
        )
        session.commit()
        job_id = job.id
    r = api_env.client.delete(f"/v1/datasets/{dataset['id']}", headers=tenant.headers)
    assert r.status_code == 409
    assert r.json()["code"] == "dataset_in_use"
    with api_env.session() as session:
        JobRepository(session).compare_and_set(job_id, expect_status=[status], values={"status": "failed"})
        session.commit()
    assert api_env.client.delete(f"/v1/datasets/{dataset['id']}", headers=tenant.headers).status_code == 204


def test_tenants_never_see_each_others_datasets(any_env: ApiEnv) -> None:
    alice, bob = any_env.tenant("alice"), any_env.tenant("bob")
    mine = upload(any_env.client, alice.headers, files=[("a.png", png())]).json()
    client = any_env.client
    for method, path in [("GET", f"/v1/datasets/{mine['id']}"), ("DELETE", f"/v1/datasets/{mine['id']}")]:
        r = client.request(method, path, headers=bob.headers)
        assert r.status_code == 404, (method, path)
        assert r.json()["code"] == "dataset_not_found"
        unknown = client.request(method, "/v1/datasets/ds_00000000000000000000000000", headers=bob.headers)
        assert unknown.json()["code"] == r.json()["code"]  # no existence leak: same answer as a missing id
    assert client.get("/v1/datasets", headers=bob.headers).json()["data"] == []
    assert client.get(f"/v1/datasets/{mine['id']}", headers=alice.headers).status_code == 200


def test_form_mistakes_are_422_with_pointers(api_env: ApiEnv) -> None:
    tenant = api_env.tenant()
    client = api_env.client
    cases = [
        (dict(files=[("a.png", png())], caption_source="exif"), "invalid_choice", "/caption_source"),
        (dict(archive=make_zip([("a.png", png())]), files=[("b.png", png())]), "archive_and_files", "/files"),
        (dict(), "no_files", "/files"),
        (dict(files=[("a.png", png())], colour="red"), "unknown_field", "/colour"),
        (dict(files=[("a.png", png())], name="x" * 201), "invalid_name", "/name"),
    ]
    for kwargs, code, pointer in cases:
        r = upload(client, tenant.headers, **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 422, (code, r.text)
        body = r.json()
        assert body["code"] == code
        assert body["errors"][0]["pointer"] == pointer


def test_upload_must_be_multipart(api_env: ApiEnv) -> None:
    tenant = api_env.tenant()
    r = api_env.client.post("/v1/datasets", headers=tenant.headers, json={"archive": "x"})
    assert r.status_code == 415
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "unsupported_media_type"
