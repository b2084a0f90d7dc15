"""Fixtures shared by the fault tests: a ZeroMQ context and a short-lived ipc directory."""

from __future__ import annotations

import shutil
import tempfile

import pytest
import zmq


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def ipc_dir():
    path = tempfile.mkdtemp(prefix="s3r", dir="/tmp")  # short: ipc paths are limited to ~100 characters
    yield path
    shutil.rmtree(path, ignore_errors=True)
