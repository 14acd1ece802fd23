"""``python -m fl.capture_check`` on real captures with the shipped model."""

from __future__ import annotations

import json

from fl import capture_check
from phoenix.config import DEFAULT_MODEL

SSH_BRUTE = "mal_bruteforce_zeek_ssh_sshguess.pcap"
MQTT = "benign_zeek_mqtt.pcap"


def test_capture_check_writes_per_model_counts(tmp_path) -> None:
    pcaps = tmp_path / "pcaps"
    pcaps.mkdir()
    for name in (SSH_BRUTE, MQTT):
        (pcaps / name).symlink_to(capture_check.CAPTURES / name)
    rc = capture_check.main(["--pcaps", str(pcaps), "--model", f"shipped={DEFAULT_MODEL}",
                             "--results", str(tmp_path)])
    assert rc == 0
    doc = json.loads((tmp_path / "capture-check.json").read_text())
    assert doc["captures"] == [MQTT, SSH_BRUTE]
    shipped = doc["models"]["shipped"]
    assert shipped["architecture"]["hidden"] == [512, 256, 128, 96, 48]
    # The shipped model flags every flow of the real SSH brute force and neither benign MQTT flow.
    assert shipped["per_file"][SSH_BRUTE] == {**shipped["per_file"][SSH_BRUTE], "flows": 11, "by_model": 11}
    assert shipped["per_file"][MQTT]["flows"] == 2 and shipped["per_file"][MQTT]["by_model"] == 0


def test_capture_check_refuses_an_empty_directory(tmp_path) -> None:
    assert capture_check.main(["--pcaps", str(tmp_path), "--results", str(tmp_path)]) == 2
