"""``hyperforge demo``: train the built-in demo style on a running service and download the result.

Uploads the synthetic "hatchwork" dataset (``core.data.demo``), submits a short job on the first
base model the service offers (local mode registers the tiny demo model), follows it with a tqdm
progress bar over SSE (or polling), downloads every artifact and prints where they are.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.data.demo import STYLE_NAME, write_demo_dataset
from core.errors import HyperforgeError
from worker.client import TERMINAL_STATUSES, Client


def demo_spec(dataset_id: str, base_model: str, steps: int, size: int = 64) -> dict[str, Any]:
    """A short training spec on the demo dataset, sized for a CPU."""
    every = max(1, steps // 2)
    return {
        "name": f"{STYLE_NAME}-demo",
        "dataset_id": dataset_id,
        "base_model": base_model,
        "hypernetwork": {"layer_structure": [1, 2, 1]},
        "training": {
            "learn_rate": "1e-4",
            "steps": steps,
            "batch_size": 1,
            "width": size,
            "height": size,
            "template": "style_filewords",
            "seed": 1234,
        },
        "checkpoints": {"save_every": every, "save_optimizer_state": True},
        "samples": {
            "every": 0,
            "prompts": [
                {
                    "prompt": f"a red circle, {STYLE_NAME} style",
                    "seed": 1,
                    "steps": 2,
                    "width": size,
                    "height": size,
                }
            ],
            "strengths": [0.0, 1.0],
        },
        "metadata": {"source": "hyperforge demo"},
    }


def follow(client: Client, job_id: str, *, poll: bool = False, stream: Any = None) -> dict[str, Any]:
    """Show a job's progress as a tqdm bar until it ends; return the final job."""
    job = client.get_job(job_id)
    total = int((job.get("progress") or {}).get("total_steps") or job["spec"]["training"]["steps"])
    events = client.poll_events(job_id) if poll else client.stream_events(job_id)
    with tqdm(total=total, unit="step", desc=job_id, file=stream or sys.stderr, dynamic_ncols=True) as bar:
        for event in events:
            data = event.get("data") or {}
            kind = event.get("type", "")
            progress = data.get("progress") if isinstance(data.get("progress"), dict) else data
            step = progress.get("step") if isinstance(progress, dict) else None
            if isinstance(step, int) and step > bar.n:
                bar.update(step - bar.n)
            if kind == "job.progress" and isinstance(progress, dict) and progress.get("loss") is not None:
                bar.set_postfix(loss=f"{float(progress['loss']):.4f}", refresh=False)
            elif kind not in ("job.progress", ""):
                bar.write(f"{kind}" + (f" step {step}" if step is not None else ""))
    job = client.get_job(job_id)
    if job["status"] not in TERMINAL_STATUSES:
        raise HyperforgeError(
            f"the event stream ended while {job_id} is {job['status']}", code="stream_ended"
        )
    return job


def run_demo(
    *, url: str, api_key: str, steps: int = 20, out: Path = Path("hyperforge-demo"), poll: bool = False
) -> int:
    """Upload, submit, follow, download; exit code 0 when the job succeeded."""
    with Client(url, api_key) as client, tempfile.TemporaryDirectory(prefix="hyperforge-demo-") as tmp:
        models = client.list_models()
        if not models:
            raise HyperforgeError("the service offers no base model; register one first", code="no_model")
        images = write_demo_dataset(Path(tmp), count=8, seed=0, size=64)
        files = [*images, *(p.with_suffix(".txt") for p in images)]
        dataset = client.upload_dataset(files, name=f"{STYLE_NAME} demo", caption_source="txt")
        print(f"dataset {dataset['id']}: {dataset['image_count']} images")
        spec = demo_spec(dataset["id"], models[0]["id"], steps)
        job = client.submit_job(spec, idempotency_key=f"demo-{uuid.uuid4()}")
        print(f"job {job['id']} queued on {models[0]['id']}")
        job = follow(client, job["id"], poll=poll)
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            print(
                f"job {job['id']} {job['status']}: {error.get('code')}: {error.get('message')}",
                file=sys.stderr,
            )
            return 1
        target = out / job["id"]
        paths = client.download_all(job["id"], target)
        for path in paths:
            print(f"  {path}")
        print(f"{len(paths)} artifacts of {job['id']} are in {target.resolve()}")
    return 0
