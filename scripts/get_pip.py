"""Install pip into the running interpreter from PyPI's wheel, for Pythons without ensurepip."""

import json
import os
import subprocess
import sys
import tempfile
import urllib.request

with urllib.request.urlopen("https://pypi.org/pypi/pip/json", timeout=60) as resp:
    meta = json.load(resp)
wheel = next(f for f in meta["urls"] if f["filename"].endswith(".whl"))
path = os.path.join(tempfile.mkdtemp(), wheel["filename"])
urllib.request.urlretrieve(wheel["url"], path)
# A pip wheel can run itself: python pip.whl/pip install pip.whl
subprocess.check_call([sys.executable, os.path.join(path, "pip"), "install", "--no-index", path])
