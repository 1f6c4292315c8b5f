"""Metrics: the FID family on Inception features (fidelity.py, inception.py) and PSNR/SSIM/LPIPS
of outputs against references (image_quality.py)."""
