"""Echocardiography: video IO, clip transforms, a synthetic echo archive and video-report datasets (issue 4)."""
