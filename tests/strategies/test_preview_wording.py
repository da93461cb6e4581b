"""The rollout steps `gitorch plan` prints read as English for one replica too ("stop the
old replica", "start 1 new replica"), not "stop all 1 old replicas"."""

from __future__ import annotations

from gitorch.manifests.loader import load_desired_state
from gitorch.manifests.model import Service
from gitorch.strategies.preview import preview_update


class File:
    def __init__(self, path: str, text: str) -> None:
        self.path, self.data = path, text.encode()
        self.blob_id = str(hash(text))


def service(replicas: int, strategy: str) -> Service:
    text = f"""\
apiVersion: gitorch.dev/v1
kind: Service
metadata: {{name: app}}
spec:
  command: [sleep, "100"]
  replicas: {replicas}
  ports: [{{name: http, containerPort: 8080}}]
  expose: {{port: 8000, targetPort: http, protocol: http}}
  strategy: {strategy}
"""
    return load_desired_state([File("app.yaml", text)], revision="r" * 40).services["app"]


def test_recreate_steps_count_replicas_right() -> None:
    one = preview_update(service(1, "{type: Recreate}"), 1).steps
    assert one[:2] == ("stop the old replica", "start 1 new replica")
    many = preview_update(service(3, "{type: Recreate}"), 2).steps
    assert many[:2] == ("stop all 2 old replicas", "start 3 new replicas")


def test_blue_green_steps_count_replicas_right() -> None:
    blue = "{type: BlueGreen, blueGreen: {autoPromotionSeconds: 60}}"
    assert preview_update(service(1, blue), 1).steps[0] == "start 1 new replica beside the old one"
    assert preview_update(service(2, blue), 3).steps[0] == (
        "start 2 new replicas beside the 3 old ones"
    )
