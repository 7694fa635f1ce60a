#!/bin/sh
# Installs the operator into an image's root filesystem. It runs inside that root filesystem, as
# root, in both ways the image is built: the Dockerfile's runtime stage and `make image` (under
# chroot, in mmdebstrap's customize hook). Same script, same wheels, same contents.
#
#   sh install.sh WHEELS   WHEELS: a folder with requirements.txt, pip.txt's wheel of pip and the
#                          wheels of every pinned distribution and of pipeline-operator itself.
set -eu
wheels=${1:?usage: install.sh WHEELS}
venv=/opt/pipeline-operator
site=$venv/lib/python3.11/site-packages

# The user the chart and deploy/ run as (runAsUser/runAsGroup 10001), with no home and no shell.
# Written directly: useradd (package passwd) is not part of the minimal root filesystem.
grep -q '^operator:' /etc/group || echo 'operator:x:10001:' >>/etc/group
grep -q '^operator:' /etc/passwd || echo 'operator:x:10001:10001:pipeline-operator:/nonexistent:/usr/sbin/nologin' >>/etc/passwd

# A virtualenv on Debian's Python, without pip: pip runs from its wheel and stays out of the image.
python3.11 -m venv --without-pip "$venv"
# --isolated: no pip configuration or PIP_* variable of the building machine applies.
pip() { "$venv/bin/python" "$(ls "$wheels"/pip-*.whl)/pip" --isolated --disable-pip-version-check --no-cache-dir "$@"; }
# Every dependency at its pinned version and hash, from the folder only; then the operator's own wheel.
pip install --quiet --no-index --find-links "$wheels" --no-deps --require-hashes --no-compile -r "$wheels/requirements.txt"
pip install --quiet --no-index --find-links "$wheels" --no-deps --no-compile "$(ls "$wheels"/pipeline_operator-*.whl)"
pip check

# kubernetes ships a second, asyncio copy of its whole client (kubernetes.aio, about 40 MB) that no
# module of kopf or the operator imports: left out. Nothing else is removed.
rm -rf "$site/kubernetes/aio"

# Bytecode compiled now (checked by hash, not by timestamp): the root filesystem is read-only at run time.
"$venv/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$site"

# The working directory and default state directory; a volume is mounted here in a cluster.
mkdir -p /var/lib/pipeline-operator
chown 10001:10001 /var/lib/pipeline-operator
rm -rf /root/.cache
