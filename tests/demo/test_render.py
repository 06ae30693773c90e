"""The demo renderer: deterministic, and every finger visible in its own colour."""

import numpy as np

from ipa.demo import render, task


def test_same_keypoints_same_pixels():
    a = task.condition(5)
    b = task.condition(5)
    assert np.array_equal(a["video"], b["video"]) and np.array_equal(a["pose_video"], b["pose_video"])
    assert not np.array_equal(a["video"], task.condition(6)["video"])


def _near(img, color, tol=40):
    return np.abs(img.astype(int) - np.array(color)).sum(-1) < tol


def test_each_finger_of_an_open_hand_is_drawn_at_its_keypoints():
    pose = task.motion(11)[0]
    pose.hand = task._hand(np.array([44.0, 30.0]), -90.0, 1.0, [0.0] * 5)  # open, spread, pointing up
    img = render.render_frame(pose)
    for color, finger in zip(render.FINGER_COLORS, render.FINGERS):
        ys, xs = np.nonzero(_near(img, color))
        assert len(xs) >= 4, f"finger {finger} not visible"
        tip = pose.hand[finger[-1]]
        # the finger's colour lies along its bones: the nearest coloured pixel is within 2 px of the tip
        assert np.hypot(xs - tip[0], ys - tip[1]).min() < 2.0


def test_moving_fingers_change_the_hand_pixels_only_near_the_hand():
    a = task.motion(11)[0]
    b = render.Pose(a.body, task._hand(a.body["r_wrist"], -80.0, 0.5, [1.0] * 5))
    a.hand = task._hand(a.body["r_wrist"], -80.0, 0.5, [0.0] * 5)
    diff = np.abs(render.render_frame(a).astype(int) - render.render_frame(b).astype(int)).sum(-1) > 0
    ys, xs = np.nonzero(diff)
    assert len(xs) > 20
    w = a.body["r_wrist"]
    assert np.hypot(xs - w[0], ys - w[1]).max() < 19  # hand length 15 px + stroke and anti-aliasing


def test_hand_inside_frame_and_masked():
    cond = task.condition(3)
    assert cond["hands"][..., :2].min() >= 2 and cond["hands"][..., :2].max() <= render.SIZE - 2
    tips = cond["hands"][:, 0, [4, 8, 12, 16, 20], :2].round().astype(int)
    for t, pts in enumerate(tips):
        assert all(cond["pixel_mask"][t, y, x] for x, y in pts)
    assert 0.005 < cond["pixel_mask"].mean() < 0.2  # a small hand, as the task wants


def test_pose_video_draws_the_fingers_on_black():
    cond = task.condition(2)
    frame, hand = cond["pose_video"][4], cond["hands"][4, 0, :, :2]
    for i in (4, 8, 12, 16, 20):
        x, y = hand[i].round().astype(int)
        assert frame[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].max() > 100
    assert (frame.max(-1) == 0).mean() > 0.8
