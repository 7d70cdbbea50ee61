#!/usr/bin/env bash
# Install the system libraries alignkit's optional backends need, when we can (root + apt-get);
# otherwise name the package to install. Nothing here is needed by the core.
#   libusb-1.0-0  Open3D imports only with it (point clouds)
#   libosmesa6    MuJoCo renders on CPU through OSMesa (robotics)
#   chromium      the tests open the HTML report pages in headless Chromium (through playwright, no browser download)
#   ffmpeg libs come inside PyAV's wheels; nothing to do here.
set -u
needed=()
for pkg in ${ALIGNKIT_SYSTEM_PACKAGES:-}; do
  dpkg -s "$pkg" >/dev/null 2>&1 || needed+=("$pkg")
done
[ ${#needed[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${needed[*]}"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}" >/dev/null \
    && exit 0
fi
echo "alignkit: missing system packages: ${needed[*]}" >&2
echo "install them with: sudo apt-get install ${needed[*]}" >&2
exit 0
