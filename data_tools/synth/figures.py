"""Articulated figures for the pose dataset: body plans, random poses, 14 keypoints.

A figure family ("strider", "stocky", ...) is a body plan: head size and limb
lengths relative to the figure's height. Figures are drawn as thick limbs, a
torso quad and a round head, filled with the class's colour and texture like
any other object, so they are ordinary pretraining classes too, and a figure
class's variant is its pose (``POSE_CLASSES``): the pretraining labels say
where the limbs are, which is what lets pretraining help keypoints. Keypoints
follow COCO's convention: "left" is the figure's left, which is the image's
right for a figure facing the viewer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

KEYPOINTS = ["head", "neck", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
             "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
             "left_ankle", "right_ankle"]
# 1-based pairs, as in COCO's person category.
SKELETON = [[1, 2], [2, 3], [2, 4], [3, 5], [5, 7], [4, 6], [6, 8], [2, 9], [2, 10],
            [9, 10], [9, 11], [11, 13], [10, 12], [12, 14]]
# Per-keypoint OKS sigmas (COCO's values for the matching person joints; head and
# neck are rigid and easy to place, so they get small ones).
SIGMAS = [0.05, 0.06, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
          0.107, 0.107, 0.087, 0.087, 0.089, 0.089]


@dataclass(frozen=True)
class BodyPlan:
    """Lengths as fractions of the figure's height; ``thickness`` is the limb width."""

    head: float
    torso: float
    shoulder: float
    hip: float
    upper_arm: float
    forearm: float
    thigh: float
    shin: float
    thickness: float


BODY_PLANS: dict[str, BodyPlan] = {
    "strider": BodyPlan(0.07, 0.26, 0.09, 0.06, 0.15, 0.14, 0.25, 0.25, 0.045),
    "stocky": BodyPlan(0.09, 0.32, 0.13, 0.10, 0.13, 0.12, 0.17, 0.16, 0.085),
    "longarm": BodyPlan(0.075, 0.27, 0.10, 0.07, 0.23, 0.22, 0.20, 0.19, 0.05),
    "bighead": BodyPlan(0.14, 0.24, 0.09, 0.07, 0.13, 0.12, 0.17, 0.16, 0.055),
}


def _dir(angle: np.ndarray | float) -> np.ndarray:
    """Unit vector at ``angle`` radians from straight down, positive towards image right."""
    return np.array([np.sin(angle), np.cos(angle)])


@dataclass(frozen=True)
class PoseClass:
    """A figure variant that is a pose, as JFT has action classes: ranges of joint angles.

    Angles are radians from straight down (``arm`` pi is straight up); the
    ranges of different classes do not overlap on the angles that define them,
    so the class names what a keypoint model must find. Every class is
    mirror-symmetric (``one-arm-up`` raises either arm), so a horizontal flip
    during pretraining never turns one class into another.
    """

    name: str
    arm: tuple[float, float]
    elbow: tuple[float, float] = (-0.5, 0.5)
    leg: tuple[float, float] = (0.0, 0.45)
    knee: tuple[float, float] = (-0.5, 0.5)
    other_arm: tuple[float, float] | None = None  # one-arm classes: the range of the lowered arm


# Indexed like ``vocab.VARIANTS``: a figure's variant is its pose.
POSE_CLASSES = [
    PoseClass("arms-down", arm=(0.1, 0.5)),
    PoseClass("arms-up", arm=(2.4, 2.9)),
    PoseClass("arms-out", arm=(1.3, 1.8), elbow=(-0.3, 0.3)),
    PoseClass("one-arm-up", arm=(2.4, 2.9), other_arm=(0.1, 0.5)),
    PoseClass("wide-stance", arm=(0.3, 1.2), leg=(0.6, 0.9)),
    PoseClass("hands-on-hips", arm=(0.6, 0.9), elbow=(-2.2, -1.8)),
]


def random_pose(rng: np.random.Generator, pose: PoseClass | None = None) -> dict[str, float]:
    """Joint angles (radians) for one figure of ``pose`` (any pose when None)."""
    if pose is None:
        pose = POSE_CLASSES[int(rng.integers(len(POSE_CLASSES)))]
    arms = [rng.uniform(*pose.arm), rng.uniform(*(pose.other_arm or pose.arm))]
    if pose.other_arm is not None and rng.random() < 0.5:  # which arm is up
        arms.reverse()
    return {
        "lean": rng.uniform(-0.2, 0.2),
        "l_arm": arms[0], "r_arm": arms[1],
        "l_elbow": rng.uniform(*pose.elbow), "r_elbow": rng.uniform(*pose.elbow),
        "l_leg": rng.uniform(*pose.leg), "r_leg": rng.uniform(*pose.leg),
        "l_knee": rng.uniform(*pose.knee), "r_knee": rng.uniform(*pose.knee),
    }


def figure_keypoints(plan: BodyPlan, pose: dict[str, float], center: tuple[float, float],
                     height: float, angle: float) -> np.ndarray:
    """(14, 2) keypoint coordinates of a figure ``height`` pixels tall, centred at ``center``."""
    lean = pose["lean"]
    down, side = _dir(lean), np.array([np.cos(lean), -np.sin(lean)])  # side points to the figure's left
    neck = np.zeros(2)
    pelvis = neck + plan.torso * down
    head = neck - (plan.head + 0.02) * down
    pts = {"head": head, "neck": neck}
    for s, sign in (("l", 1.0), ("r", -1.0)):
        name = "left" if s == "l" else "right"
        shoulder = neck + sign * plan.shoulder * side
        elbow = shoulder + plan.upper_arm * _dir(lean + sign * pose[f"{s}_arm"])
        wrist = elbow + plan.forearm * _dir(lean + sign * (pose[f"{s}_arm"] + pose[f"{s}_elbow"]))
        hip = pelvis + sign * plan.hip * side
        knee = hip + plan.thigh * _dir(lean + sign * pose[f"{s}_leg"])
        ankle = knee + plan.shin * _dir(lean + sign * pose[f"{s}_leg"] + pose[f"{s}_knee"])
        pts.update({f"{name}_shoulder": shoulder, f"{name}_elbow": elbow, f"{name}_wrist": wrist,
                    f"{name}_hip": hip, f"{name}_knee": knee, f"{name}_ankle": ankle})
    local = np.stack([pts[k] for k in KEYPOINTS])
    top, bottom = local[:, 1].min() - plan.head, local[:, 1].max()
    local = local - np.array([0.0, (top + bottom) / 2])  # centre the figure vertically
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (local * height) @ rot.T + np.asarray(center)


def figure_mask(plan: BodyPlan, keypoints: np.ndarray, height: float, thickness_scale: float,
                size_hw: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the figure drawn through ``keypoints``.

    Every keypoint gets a joint disc of radius >= 1.5 px, so the pixel under a
    keypoint always belongs to its figure (the visibility flags rely on it).
    """
    canvas = Image.new("L", (size_hw[1], size_hw[0]), 0)
    draw = ImageDraw.Draw(canvas)
    kp = keypoints - 0.5  # PIL addresses pixel centres
    width = max(2, int(round(plan.thickness * thickness_scale * height)))
    joint = max(1.5, width / 2)
    torso = [kp[2], kp[3], kp[9], kp[8]]
    draw.polygon([tuple(p) for p in torso], fill=255)
    for a, b in SKELETON:
        draw.line([tuple(kp[a - 1]), tuple(kp[b - 1])], fill=255, width=width)
    for x, y in kp.tolist():
        draw.ellipse([x - joint, y - joint, x + joint, y + joint], fill=255)
    r = max(2.0, plan.head * height)
    hx, hy = kp[0]
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=255)
    return np.asarray(canvas) > 0


def keypoint_visibility(keypoints: np.ndarray, idmap: np.ndarray, object_id: int) -> np.ndarray:
    """COCO flags per keypoint: 0 outside the image, 1 hidden by another object, 2 visible."""
    h, w = idmap.shape
    flags = np.zeros(len(keypoints), dtype=np.int64)
    for k, (x, y) in enumerate(keypoints):
        col, row = int(np.floor(x)), int(np.floor(y))
        if 0 <= col < w and 0 <= row < h:
            flags[k] = 2 if idmap[row, col] == object_id else 1
    return flags
