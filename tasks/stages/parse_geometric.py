"""The geometric parser backend (the default): an approximate CIHP map from MediaPipe's own outputs.

It needs no weights: the person silhouette comes from MediaPipe Pose's segmentation, the face from
MediaPipe Face Mesh, and body parts from the BODY_25 skeleton and MediaPipe's hand landmarks. Colour
models (skin from the face below the forehead, hair from the head around it, the top from the chest as
a two-colour mixture, the bottom from just below the hips) decide skin against sleeve, hair against
face and clothes, and where the top ends. It follows the conventions of the dataset's own CIHP_PGN maps
(bench/accuracy.py measures it against them): hands belong to their arms, long hair is one region, the
neck and neckline are torso-skin (10), sleeves are the top. `parser_id` says it is approximate.

Everything is decided within the person's box at WORK_SCALE (VITON-HD's own maps were parsed at
256x192, a quarter, and upsampled and blurred: contract §1.3); the labels are smoothed the way theirs
were and brought to full size, where the silhouette cuts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from tasks.stages.binary_masks import fill_holes, largest_component
from tasks.stages.pose import (
    MP_LEFT_EAR,
    MP_LEFT_INDEX,
    MP_LEFT_PINKY,
    MP_LEFT_THUMB,
    MP_LEFT_WRIST,
    MP_RIGHT_EAR,
    MP_RIGHT_INDEX,
    MP_RIGHT_PINKY,
    MP_RIGHT_THUMB,
    MP_RIGHT_WRIST,
)
from vitonhd_models.contract import Body25, Cihp

if TYPE_CHECKING:  # pragma: no cover
    from tasks.stages.pose import PoseResult

# ---------------------------------------------------------------------------------------------
# Geometric backend: MediaPipe silhouette + face mesh + skeleton, approximate
# ---------------------------------------------------------------------------------------------

# MediaPipe Pose landmark ids used beside BODY_25: the face (for a fallback face ellipse) and the hands.
_MP_LEFT_HAND = (MP_LEFT_WRIST, MP_LEFT_PINKY, MP_LEFT_INDEX, MP_LEFT_THUMB)  # the wrist first
_MP_RIGHT_HAND = (MP_RIGHT_WRIST, MP_RIGHT_PINKY, MP_RIGHT_INDEX, MP_RIGHT_THUMB)

# Part ids of the internal partition of the silhouette (not CIHP ids).
_HEAD, _TORSO, _L_ARM, _R_ARM, _L_LEG, _R_LEG, _L_HAND, _R_HAND = range(8)

WORK_SCALE = 0.375  # parts, colours, skin and labels are decided at 3/8 of the size (288x384 for the canvas)
CROP_MARGIN_PX = 16  # the box: around the silhouette, the keypoints and the face, in pixels of the image
# In pixels at full size; the work frame scales lengths by WORK_SCALE and areas by its square.
SKIN_CLEAN_RADIUS_PX = 4  # the opening and closing that clean specks off the skin mask
MIN_MODEL_PIXELS = 200  # the fewest pixels a colour model is fitted on


def _in_parts(parts: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """np.isin(parts, ids) for part ids -1..7, by a lookup table."""
    table = np.zeros(9, dtype=bool)
    table[np.asarray(ids) + 1] = True
    return table[parts + 1]


MIXTURE_COMPONENTS = 2  # colours of a top: a plain one, or the two of a print, stripes or a yoke
MIXTURE_MIN_SHARE = 0.15  # a component holds at least this share of the garment's pixels


MODEL_MAX_PIXELS = 4000  # a colour model is fitted on at most this many of its region's pixels


def _subsample(pixels: np.ndarray) -> np.ndarray:
    """Every k-th pixel, so that at most MODEL_MAX_PIXELS remain (deterministic)."""
    step = -(-len(pixels) // MODEL_MAX_PIXELS)
    return pixels[::step] if step > 1 else pixels


class _ColourModel:
    """A Gaussian over Lab pixels, with a variance floor so shading does not break it."""

    def __init__(self, pixels_lab: np.ndarray, floor: tuple[float, float, float] = (6.0, 3.0, 3.0)):
        pixels = _subsample(pixels_lab.reshape(-1, 3).astype(np.float32))
        mean = np.median(pixels, axis=0)
        for _ in range(2):  # trim outliers (eyes, lips, prints), then refit
            cov = np.cov(pixels.T) + np.diag(np.square(floor))
            distance = _mahalanobis(pixels, mean, _whitening(cov))
            keep = distance <= np.percentile(distance, 90)
            if keep.sum() >= 20:
                pixels = pixels[keep]
            mean = pixels.mean(axis=0)
        self.mean = mean
        self.cov = np.cov(pixels.T) + np.diag(np.square(floor))
        self.whitening = _whitening(self.cov)
        self.log_det = float(np.linalg.slogdet(self.cov)[1])

    def distance(self, pixels_lab: np.ndarray) -> np.ndarray:
        return _mahalanobis(pixels_lab.reshape(-1, 3), self.mean, self.whitening)

    def log_likelihood(self, pixels_lab: np.ndarray) -> np.ndarray:
        return self.log_likelihood_at(self.distance(pixels_lab))

    def log_likelihood_at(self, distance: np.ndarray) -> np.ndarray:
        """The log-likelihood of pixels at these distances from the model."""
        return -0.5 * (np.square(distance) + self.log_det)

    @property
    def components(self) -> list[_ColourModel]:
        return [self]


def _separation(first: _ColourModel | _Mixture, second: _ColourModel | _Mixture) -> float:
    """How far apart two models are: the smaller of each mean's distance under the other model (of the
    closest two components)."""
    return float(min(min(b.distance(a.mean[None])[0], a.distance(b.mean[None])[0])
                     for a in first.components for b in second.components))


class _Mixture:
    """Up to MIXTURE_COMPONENTS Gaussians over a garment's pixels (two-tone tops, stripes, prints):
    a pixel's likelihood and distance are those of its closest component."""

    def __init__(self, pixels_lab: np.ndarray, min_pixels: float, **kwargs):
        pixels = _subsample(pixels_lab.reshape(-1, 3).astype(np.float32))
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 10, 1.0)
        cv2.setRNGSeed(0)
        _, assignment, _ = cv2.kmeans(pixels, MIXTURE_COMPONENTS, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
        assignment = assignment.ravel()
        self._components = [_ColourModel(pixels[assignment == k], **kwargs) for k in range(MIXTURE_COMPONENTS)
                            if (assignment == k).sum() >= max(min_pixels, MIXTURE_MIN_SHARE * len(pixels))]
        if not self._components:
            self._components = [_ColourModel(pixels, **kwargs)]
        self.mean = self._components[0].mean

    @property
    def components(self) -> list[_ColourModel]:
        return self._components

    def distance(self, pixels_lab: np.ndarray) -> np.ndarray:
        return np.min([c.distance(pixels_lab) for c in self._components], axis=0)

    def log_likelihood(self, pixels_lab: np.ndarray) -> np.ndarray:
        return np.max([c.log_likelihood(pixels_lab) for c in self._components], axis=0)


def _whitening(cov: np.ndarray) -> np.ndarray:
    """W with W @ W.T = inv(cov): the Mahalanobis distance of delta is the length of delta @ W."""
    return np.linalg.cholesky(np.linalg.inv(cov)).astype(np.float32)


def _mahalanobis(pixels: np.ndarray, mean: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    whitened = (pixels.astype(np.float32) - mean.astype(np.float32)) @ whitening
    return np.sqrt(np.einsum("ij,ij->i", whitened, whitened))


def _fit_model(lab: np.ndarray, region: np.ndarray, min_pixels: float, **kwargs) -> _ColourModel | None:
    if region is None or int(region.sum()) < min_pixels:
        return None
    return _ColourModel(lab[region], **kwargs)


@dataclass
class _Skeleton:
    """The keypoints the parser trusts, in pixels, plus the body's scale."""

    points: dict[int, np.ndarray]  # BODY_25 id -> (x, y), only confident joints inside the image
    hands: dict[str, np.ndarray]  # "left"/"right" -> hand tip (x, y) from MediaPipe's hand landmarks
    shoulder_width: float
    axis: np.ndarray  # unit vector from mid-shoulder towards mid-hip (image down when unknown)
    torso_length: float
    mid_shoulder: np.ndarray | None

    def get(self, joint: int) -> np.ndarray | None:
        return self.points.get(int(joint))

    def scaled(self, frame: _Frame) -> _Skeleton:
        """The same skeleton in the pixels of `frame`."""
        return _Skeleton(
            points={joint: frame.points(point) for joint, point in self.points.items()},
            hands={side: frame.points(tip) for side, tip in self.hands.items()},
            shoulder_width=self.shoulder_width * frame.scale,
            axis=self.axis,
            torso_length=self.torso_length * frame.scale,
            mid_shoulder=None if self.mid_shoulder is None else frame.points(self.mid_shoulder),
        )


@dataclass
class _Face:
    polygon: np.ndarray  # (K, 2) int32 convex outline of the face
    mask: np.ndarray  # (H, W) bool
    width: float
    chin: np.ndarray  # (x, y), the lowest point of the outline
    forehead: np.ndarray  # (H, W) bool: the band of the outline above the eyes, where a fringe falls


class GeometricParser:
    """Approximate CIHP parsing from MediaPipe's own outputs (no trained parser needed).

    Labels: 13 face (the Face Mesh oval and the skin beside it, less a fringe, without holes), 2 hair
    (one region around the head: over the forehead, the shoulders and the top), 10 torso-skin (the
    neck and the neckline only), 5 upper clothes, 14/15 arms (their skin, and each hand whole; sleeves
    are upper clothes), 9 pants or 12 skirt (no gap between the legs down to a hem above the ankles),
    16/17 legs (bare skin below the hips), 18/19 shoes (near visible feet). Never labels a pixel
    outside the person silhouette.
    Dresses, coats, hats, scarves, gloves, socks and sunglasses are not told apart (they land in the
    nearest of the labels above).

    Holds a MediaPipe Face Mesh graph: one parser per thread; `close()` it or use it as a context manager.
    """

    parser_id = "geometric-v3"  # v3: hair as one region, fringe, hole-free face, arms over the body, curved waist; v2: skirts

    def __init__(
        self,
        segmentation_threshold: float = 0.5,
        min_keypoint_confidence: float = 0.3,
        use_colour: bool = True,
    ):
        self.segmentation_threshold = segmentation_threshold
        self.min_keypoint_confidence = min_keypoint_confidence
        self.use_colour = use_colour
        self._face_mesh = None

    # -- life cycle ---------------------------------------------------------------------------

    def _mesh(self):
        if self._face_mesh is None:
            import mediapipe as mp

            self._face_mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=1, refine_landmarks=False
            )
        return self._face_mesh

    def prepare(self) -> None:
        """Build the Face Mesh graph now rather than on the first image."""
        self._mesh()

    def close(self) -> None:
        if self._face_mesh is not None:
            self._face_mesh.close()
            self._face_mesh = None

    def __enter__(self) -> GeometricParser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the parse ----------------------------------------------------------------------------

    def parse(self, image_rgb: np.ndarray, pose: PoseResult) -> np.ndarray:
        image_rgb = np.ascontiguousarray(image_rgb)
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image; got {image_rgb.shape}")
        shape = image_rgb.shape[:2]
        labels = np.zeros(shape, dtype=np.uint8)
        skeleton = _skeleton(pose, shape, self.min_keypoint_confidence)
        polygon = self._face_polygon(image_rgb, pose, skeleton)
        silhouette = None
        if pose.segmentation is not None:
            silhouette = _segmentation(pose, shape) > self.segmentation_threshold
            if not silhouette.any():
                return labels
        frame = _Frame.around(shape, silhouette, skeleton, polygon)
        x0, y0, x1, y1 = frame.box
        crop = frame.at_full_size()
        labels[y0:y1, x0:x1] = self._label(
            frame, crop.crop(image_rgb), pose, skeleton, polygon,
            None if silhouette is None else crop.crop(silhouette))
        return labels

    def _label(self, frame: _Frame, image_rgb: np.ndarray, pose: PoseResult, skeleton: _Skeleton,
               polygon: np.ndarray | None, silhouette: np.ndarray | None) -> np.ndarray:
        """The labels of the box (`image_rgb`, `silhouette`: the box at full size; `skeleton`, `polygon`:
        pixels of the whole image)."""
        # At WORK_SCALE: the body parts, the colour models, the skin and the waist line.
        work_image = cv2.resize(image_rgb, frame.size, interpolation=cv2.INTER_AREA)
        work_shape = work_image.shape[:2]
        work_skeleton = skeleton.scaled(frame)
        work_face = None if polygon is None else _face_from_polygon(frame.points(polygon), work_shape)
        if pose.segmentation is not None:  # grown by a pixel: every silhouette pixel at full size gets a part
            work_silhouette = frame.segmentation(_segmentation(pose, frame.full_shape)) > self.segmentation_threshold
            work_silhouette = cv2.dilate(work_silhouette.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        else:
            work_silhouette = _silhouette_from_skeleton(work_shape, work_skeleton, work_face)
        work_parts = _partition(work_silhouette, work_skeleton, work_face)
        work_axial = _axial(work_shape, work_skeleton)
        lab = cv2.cvtColor(work_image, cv2.COLOR_RGB2LAB)
        area = frame.scale**2
        models = _colour_models(lab, work_parts, work_skeleton, work_face, work_axial, area) if self.use_colour \
            else _Models()
        work_skin = _skin_mask(lab, work_parts, models, frame)
        work_waist = _waist_rows(lab, work_parts, work_skeleton, work_axial, models, work_skin)
        work_hair = _hair_region(lab, work_parts, models, work_face, work_skin, work_axial)
        work_hands = _hand_regions(work_parts, work_skeleton, work_skin, lab, models)
        work_collar = _collar(lab, work_parts, models, work_skin)
        if work_skin is not None:
            work_skin = _without_sleeve_specks(work_skin, work_parts, work_hands, work_skeleton)

        # The labels, at WORK_SCALE too, then smoothed (as the dataset's maps were) and brought to full size.
        near_face = None if work_face is None else _distance_to(work_face.mask) <= 0.2 * work_face.width
        below_waist = np.arange(work_shape[0])[:, None] >= work_waist[None, :]
        left_side = _person_left(work_shape, work_skeleton)
        labels = np.zeros(work_shape, dtype=np.uint8)
        _label_torso(labels, work_parts, work_skin, below_waist, work_face, left_side)
        _label_arms(labels, work_parts, work_skin, below_waist, lab, models)
        _label_legs(labels, work_parts, work_skin, below_waist, work_axial, work_skeleton, left_side)
        _label_head(labels, work_parts, work_face, work_skin, near_face, work_hair, work_collar)
        _label_neck(labels, work_parts, work_silhouette, work_skeleton, work_face, work_skin)
        _label_shoes(labels, work_parts, work_skin, work_skeleton)
        for side, label in (("left", Cihp.LEFT_ARM), ("right", Cihp.RIGHT_ARM)):  # a hand is its arm, never a leg
            labels[work_hands[side]] = label
        labels[~work_silhouette] = 0
        if _is_skirt(labels == Cihp.PANTS, work_skeleton):
            labels[labels == Cihp.PANTS] = Cihp.SKIRT
        labels = frame.upsample(_smooth_labels(labels, SMOOTH_SIGMA_PX * frame.scale), cv2.INTER_NEAREST)
        if silhouette is None:
            silhouette = frame.upsample(work_silhouette.astype(np.uint8), cv2.INTER_NEAREST).astype(bool)
        labels[~silhouette] = 0  # the outline at full size; smoothing rounds corners off, never grows the person
        return labels

    def _face_polygon(self, image_rgb: np.ndarray, pose: PoseResult, skeleton: _Skeleton) -> np.ndarray | None:
        """Face Mesh's oval when it belongs to the posed person, else an ellipse from the pose's face
        (pixels of the image)."""
        polygon = _face_mesh_polygon(self._mesh(), image_rgb)
        if polygon is not None and not _face_matches_pose(polygon, skeleton):
            polygon = None  # Face Mesh found someone else's face (another person, a poster)
        if polygon is None:
            polygon = _face_ellipse_from_pose(pose, image_rgb.shape[:2], skeleton)
        return polygon


# VITON-HD's maps were parsed at 256x192, upsampled and blurred (contract §1.3): their boundaries are
# smooth curves, without the pixel-scale ragging colour decisions leave. Ours get the same treatment: each
# label's share blurred with this sigma (pixels of the 768x1024 image), the likeliest label kept.
SMOOTH_SIGMA_PX = 10.0


def _smooth_labels(labels: np.ndarray, sigma: float) -> np.ndarray:
    """Each pixel takes the label with the largest Gaussian-weighted share around it (`sigma` in pixels
    of `labels`; the shares are blurred at half its size)."""
    height, width = labels.shape
    small = (max(1, width // 2), max(1, height // 2))
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=len(Cihp)))
    shares = np.empty((len(present), height, width), dtype=np.float32)
    for index, label in enumerate(present):
        share = cv2.resize((labels == label).astype(np.float32), small, interpolation=cv2.INTER_AREA)
        share = cv2.GaussianBlur(share, (0, 0), sigma / 2)
        shares[index] = cv2.resize(share, (width, height), interpolation=cv2.INTER_LINEAR)
    return present[np.argmax(shares, axis=0)].astype(labels.dtype)


def _segmentation(pose: PoseResult, shape: tuple[int, int]) -> np.ndarray:
    segmentation = np.asarray(pose.segmentation, dtype=np.float32)
    if segmentation.shape != shape:
        segmentation = cv2.resize(segmentation, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return segmentation


FOREHEAD_SHARE = 0.38  # of the face outline's height, from its top: above the brows, where a fringe falls


def _face_from_polygon(polygon: np.ndarray, shape: tuple[int, int]) -> _Face:
    polygon = np.round(polygon).astype(np.int32)
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillConvexPoly(mask, polygon, 1)
    chin = polygon[np.argmax(polygon[:, 1])].astype(np.float64)
    width = float(polygon[:, 0].max() - polygon[:, 0].min())
    top = polygon[:, 1].min()
    forehead = np.arange(shape[0])[:, None] < top + FOREHEAD_SHARE * (chin[1] - top)
    return _Face(polygon, mask.astype(bool), max(width, 1.0), chin, np.broadcast_to(forehead, shape))


@dataclass(frozen=True)
class _Frame:
    """A box (x0, y0, x1, y1) of the image, resampled to `size` (width, height)."""

    full_shape: tuple[int, int]
    box: tuple[int, int, int, int]
    size: tuple[int, int]

    @classmethod
    def around(cls, shape: tuple[int, int], silhouette: np.ndarray | None, skeleton: _Skeleton,
               polygon: np.ndarray | None) -> _Frame:
        """The person's box (silhouette, keypoints and face, plus a margin) at WORK_SCALE; the whole
        image without a silhouette (the one drawn from the skeleton reaches past its joints)."""
        height, width = shape
        if silhouette is None:
            box = (0, 0, width, height)
        else:
            rows, cols = np.flatnonzero(silhouette.any(axis=1)), np.flatnonzero(silhouette.any(axis=0))
            xs = [cols[0], cols[-1]] + [p[0] for p in skeleton.points.values()]
            ys = [rows[0], rows[-1]] + [p[1] for p in skeleton.points.values()]
            if polygon is not None:
                xs += [polygon[:, 0].min(), polygon[:, 0].max()]
                ys += [polygon[:, 1].min(), polygon[:, 1].max()]
            box = (max(0, int(min(xs)) - CROP_MARGIN_PX), max(0, int(min(ys)) - CROP_MARGIN_PX),
                   min(width, int(max(xs)) + 1 + CROP_MARGIN_PX), min(height, int(max(ys)) + 1 + CROP_MARGIN_PX))
        x0, y0, x1, y1 = box
        size = (max(1, int(np.ceil((x1 - x0) * WORK_SCALE))), max(1, int(np.ceil((y1 - y0) * WORK_SCALE))))
        return cls(shape, box, size)

    def at_full_size(self) -> _Frame:
        x0, y0, x1, y1 = self.box
        return _Frame(self.full_shape, self.box, (x1 - x0, y1 - y0))

    @property
    def scale(self) -> float:
        x0, y0, x1, y1 = self.box
        return (self.size[0] / (x1 - x0) + self.size[1] / (y1 - y0)) / 2

    def points(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) pixel coordinates of the image -> of the frame (pixel centres kept aligned)."""
        x0, y0, x1, y1 = self.box
        factor = np.array([self.size[0] / (x1 - x0), self.size[1] / (y1 - y0)])
        return (np.asarray(points, dtype=np.float64) - (x0, y0) + 0.5) * factor - 0.5

    def crop(self, array: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        return np.ascontiguousarray(array[y0:y1, x0:x1])

    def segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return cv2.resize(self.crop(segmentation), self.size, interpolation=cv2.INTER_AREA)

    def upsample(self, work: np.ndarray, interpolation: int) -> np.ndarray:
        """A map of this frame at the box's full size."""
        x0, y0, x1, y1 = self.box
        return cv2.resize(work, (x1 - x0, y1 - y0), interpolation=interpolation)


# -- geometry helpers ------------------------------------------------------------------------


def _skeleton(pose: PoseResult, shape: tuple[int, int], min_confidence: float) -> _Skeleton:
    height, width = shape
    keypoints = np.asarray(pose.keypoints_body25, dtype=np.float64).reshape(-1, 3)
    points: dict[int, np.ndarray] = {}
    for joint, (x, y, confidence) in enumerate(keypoints):
        if confidence >= min_confidence and 0 <= x < width and 0 <= y < height and (x, y) != (0.0, 0.0):
            points[joint] = np.array([x, y])

    hands: dict[str, np.ndarray] = {}
    landmarks = None if pose.landmarks_px is None else np.asarray(pose.landmarks_px, dtype=np.float64)
    if landmarks is not None and landmarks.shape[0] >= 23:
        for side, ids in (("left", _MP_LEFT_HAND), ("right", _MP_RIGHT_HAND)):
            wrist = landmarks[ids[0]]
            fingers = [landmarks[i] for i in ids[1:] if _landmark_ok(landmarks[i], shape, min_confidence)]
            if fingers and _landmark_ok(wrist, shape, min_confidence):
                tip = np.mean([f[:2] for f in fingers], axis=0)
                hands[side] = wrist[:2] + 1.6 * (tip - wrist[:2])  # fingertips lie past the knuckles

    left, right = points.get(Body25.L_SHOULDER), points.get(Body25.R_SHOULDER)
    mid_shoulder = (left + right) / 2 if left is not None and right is not None else points.get(Body25.NECK)
    shoulder_width = float(np.linalg.norm(left - right)) if left is not None and right is not None else 0.0
    hips = [points[j] for j in (Body25.L_HIP, Body25.R_HIP) if j in points]
    mid_hip = np.mean(hips, axis=0) if hips else None
    if mid_shoulder is not None and mid_hip is not None and np.linalg.norm(mid_hip - mid_shoulder) > 1:
        axis_vector = mid_hip - mid_shoulder
        torso_length = float(np.linalg.norm(axis_vector))
        axis = axis_vector / torso_length
    else:
        axis = np.array([0.0, 1.0])
        torso_length = 1.7 * shoulder_width
    if shoulder_width <= 1:  # one shoulder or none: fall back on the torso, then on the image
        shoulder_width = torso_length / 1.7 if torso_length > 1 else width / 3
        torso_length = torso_length if torso_length > 1 else 1.7 * shoulder_width
    return _Skeleton(points, hands, shoulder_width, axis, torso_length, mid_shoulder)


def _landmark_ok(landmark: np.ndarray, shape: tuple[int, int], min_confidence: float) -> bool:
    x, y, _, visibility = landmark[:4]
    return visibility >= min_confidence and 0 <= x < shape[1] and 0 <= y < shape[0]


def _face_mesh_polygon(face_mesh, image_rgb: np.ndarray) -> np.ndarray | None:
    """The Face Mesh oval (FACEMESH_FACE_OVAL) as a convex polygon in pixels, or None if no face."""
    import mediapipe as mp

    result = face_mesh.process(image_rgb)
    if not result.multi_face_landmarks:
        return None
    height, width = image_rgb.shape[:2]
    landmarks = result.multi_face_landmarks[0].landmark
    oval_ids = sorted({i for edge in mp.solutions.face_mesh.FACEMESH_FACE_OVAL for i in edge})
    points = np.array([[landmarks[i].x * width, landmarks[i].y * height] for i in oval_ids])
    return cv2.convexHull(np.round(points).astype(np.int32)).reshape(-1, 2)


def _face_matches_pose(polygon: np.ndarray, skeleton: _Skeleton) -> bool:
    """The pose's nose lies in (or next to) the face outline; without a nose, trust the mesh."""
    nose = skeleton.get(Body25.NOSE)
    if nose is None:
        return True
    width = float(polygon[:, 0].max() - polygon[:, 0].min())
    inside = cv2.pointPolygonTest(polygon.reshape(-1, 1, 2).astype(np.int32), _pt(nose), True)
    return inside >= -0.25 * width


def _face_ellipse_from_pose(pose: PoseResult, shape: tuple[int, int], skeleton: _Skeleton) -> np.ndarray | None:
    """A face-sized ellipse around the nose when Face Mesh finds no face (profile, blur, small face)."""
    landmarks = None if pose.landmarks_px is None else np.asarray(pose.landmarks_px, dtype=np.float64)
    nose = skeleton.get(Body25.NOSE)
    if nose is None:
        return None
    face_width = 0.45 * skeleton.shoulder_width
    if landmarks is not None and landmarks.shape[0] > MP_RIGHT_EAR:
        ears = [landmarks[i] for i in (MP_LEFT_EAR, MP_RIGHT_EAR)]
        if all(_landmark_ok(e, shape, 0.3) for e in ears):
            face_width = float(np.linalg.norm(ears[0][:2] - ears[1][:2])) or face_width
    half_w, half_h = face_width / 2, 0.65 * face_width
    centre = (int(round(nose[0])), int(round(nose[1] - 0.1 * half_h)))
    return cv2.ellipse2Poly(centre, (max(int(half_w), 1), max(int(half_h), 1)), 0, 0, 360, 10).astype(np.int32)


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest pixel of `mask` (0 inside it)."""
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)


def _distance_to_segment(shape: tuple[int, int], p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    canvas = np.zeros(shape, dtype=np.uint8)
    cv2.line(canvas, _pt(p0), _pt(p1), 1, 1)
    return _distance_to(canvas.astype(bool))


def _pt(point: np.ndarray) -> tuple[int, int]:
    return int(round(float(point[0]))), int(round(float(point[1])))


def _chain(skeleton: _Skeleton, joints: Sequence[int]) -> list[np.ndarray]:
    return [skeleton.get(j) for j in joints if skeleton.get(j) is not None]


def _torso_polygon(skeleton: _Skeleton) -> np.ndarray | None:
    """Shoulders to hips; a missing hip is placed one torso length below its shoulder."""
    corners = []
    for shoulder, hip in ((Body25.L_SHOULDER, Body25.L_HIP), (Body25.R_SHOULDER, Body25.R_HIP)):
        s, h = skeleton.get(shoulder), skeleton.get(hip)
        if s is None:
            return None
        corners.append((s, h if h is not None else s + skeleton.axis * skeleton.torso_length))
    (ls, lh), (rs, rh) = corners
    return np.array([_pt(ls), _pt(rs), _pt(rh), _pt(lh)], dtype=np.int32)


_ARM_JOINTS = {
    "left": (Body25.L_SHOULDER, Body25.L_ELBOW, Body25.L_WRIST),
    "right": (Body25.R_SHOULDER, Body25.R_ELBOW, Body25.R_WRIST),
}
_LEG_JOINTS = {
    "left": (Body25.L_HIP, Body25.L_KNEE, Body25.L_ANKLE, (Body25.L_BIG_TOE, Body25.L_SMALL_TOE, Body25.L_HEEL)),
    "right": (Body25.R_HIP, Body25.R_KNEE, Body25.R_ANKLE, (Body25.R_BIG_TOE, Body25.R_SMALL_TOE, Body25.R_HEEL)),
}


def _arm_chain(skeleton: _Skeleton, side: str) -> list[np.ndarray]:
    """Shoulder -> elbow -> wrist -> hand tip, skipping missing joints."""
    chain = _chain(skeleton, _ARM_JOINTS[side])
    if side in skeleton.hands and skeleton.get(_ARM_JOINTS[side][2]) is not None:
        chain.append(skeleton.hands[side])
    return chain


def _leg_chain(skeleton: _Skeleton, side: str) -> list[np.ndarray]:
    """Hip -> knee -> ankle -> foot; a knee out of frame is extrapolated down the body axis."""
    hip, knee, ankle, foot = _LEG_JOINTS[side]
    chain = _chain(skeleton, (hip, knee, ankle))
    if skeleton.get(hip) is not None and skeleton.get(knee) is None:
        chain = [skeleton.get(hip), skeleton.get(hip) + skeleton.axis * 1.2 * skeleton.torso_length]
    feet = _chain(skeleton, foot)
    if feet and skeleton.get(ankle) is not None:
        chain.append(np.mean(feet, axis=0))
    return chain


# -- silhouette and partition ------------------------------------------------------------------


def _silhouette_from_skeleton(shape: tuple[int, int], skeleton: _Skeleton, face: _Face | None) -> np.ndarray:
    """Person pixels without a segmentation: polygons and thick lines along the skeleton."""
    sw = skeleton.shoulder_width
    canvas = np.zeros(shape, dtype=np.uint8)
    torso = _torso_polygon(skeleton)
    if torso is not None:
        cv2.fillConvexPoly(canvas, torso, 1)
        cv2.polylines(canvas, [torso], True, 1, max(int(0.2 * sw), 1))
    if face is not None:
        centre = face.polygon.mean(axis=0)
        cv2.ellipse(canvas, _pt(centre), (int(0.7 * face.width), int(0.85 * face.width)), 0, 0, 360, 1, -1)
        if skeleton.mid_shoulder is not None:
            cv2.line(canvas, _pt(face.chin), _pt(skeleton.mid_shoulder), 1, max(int(0.25 * sw), 1))
    for chain, radius in _limb_chains(skeleton):
        for p0, p1 in zip(chain, chain[1:]):
            cv2.line(canvas, _pt(p0), _pt(p1), 1, max(int(2 * radius * 0.8), 1))
    return canvas.astype(bool)


def _limb_chains(skeleton: _Skeleton) -> list[tuple[list[np.ndarray], float]]:
    sw = skeleton.shoulder_width
    arms = [(_arm_chain(skeleton, side), 0.13 * sw) for side in ("left", "right")]
    legs = [(_leg_chain(skeleton, side), 0.2 * sw) for side in ("left", "right")]
    return arms + legs


def _chain_score(shape: tuple[int, int], chain: list[np.ndarray], radii: Sequence[float]) -> np.ndarray:
    """min over the chain's segments of (distance to the segment / that segment's radius)."""
    score = np.full(shape, np.inf, dtype=np.float32)
    for index, (p0, p1) in enumerate(zip(chain, chain[1:])):
        radius = radii[min(index, len(radii) - 1)]
        score = np.minimum(score, _distance_to_segment(shape, p0, p1) / max(radius, 1.0))
    return score


def _partition(silhouette: np.ndarray, skeleton: _Skeleton, face: _Face | None) -> np.ndarray:
    """Split the silhouette into head/torso/arms/legs: each pixel goes to the part it is nearest to,
    distances scaled by each part's nominal thickness. -1 outside the silhouette or far from all parts."""
    shape = silhouette.shape
    sw = skeleton.shoulder_width
    scores = np.full((6,) + shape, np.inf, dtype=np.float32)
    if face is not None:
        scores[_HEAD] = _distance_to(face.mask) / (0.45 * face.width)
    torso = _torso_polygon(skeleton)
    if torso is not None:
        canvas = np.zeros(shape, dtype=np.uint8)
        cv2.fillConvexPoly(canvas, torso, 1)
        scores[_TORSO] = _distance_to(canvas.astype(bool)) / (0.16 * sw)
    arm_radii = (0.14 * sw, 0.11 * sw, 0.10 * sw)  # upper arm, forearm, hand
    leg_radii = (0.22 * sw, 0.14 * sw, 0.10 * sw)  # thigh, calf, foot
    for part, chain, radii in (
        (_L_ARM, _arm_chain(skeleton, "left"), arm_radii),
        (_R_ARM, _arm_chain(skeleton, "right"), arm_radii),
        (_L_LEG, _leg_chain(skeleton, "left"), leg_radii),
        (_R_LEG, _leg_chain(skeleton, "right"), leg_radii),
    ):
        if len(chain) >= 2:
            scores[part] = _chain_score(shape, chain, radii)
    parts = np.argmin(scores, axis=0).astype(np.int8)
    for arm in (_L_ARM, _R_ARM):  # an arm at the side or across the body lies in front of the torso
        parts[(scores[arm] <= 1.0) & (scores[arm] < scores[_HEAD]) & _in_parts(parts, (_TORSO,))] = arm
    for hand, arm, side in ((_L_HAND, _L_ARM, "left"), (_R_HAND, _R_ARM, "right")):
        zone = _hand_zone(shape, skeleton, side)  # hands lie in front of the torso and legs they touch
        parts[zone & _in_parts(parts, (arm, _TORSO, _L_LEG, _R_LEG))] = hand
    best = np.min(scores, axis=0)
    parts[~silhouette | ~np.isfinite(best) | (best > 8.0)] = -1
    return parts


def _hand_zone(shape: tuple[int, int], skeleton: _Skeleton, side: str) -> np.ndarray:
    """Pixels near the hand: wrist to MediaPipe's hand tip, or a disc at the wrist without it."""
    wrist = skeleton.get(_ARM_JOINTS[side][2])
    if wrist is None:
        return np.zeros(shape, dtype=bool)
    radius = 0.1 * skeleton.shoulder_width
    tip = skeleton.hands.get(side, wrist)
    return _distance_to_segment(shape, wrist, tip) <= radius


HAND_REACH = 0.16  # shoulder widths around the wrist-to-fingertips line where the hand's skin is looked for
HAND_CORE = 0.06  # shoulder widths around that line's outer part that are hand whatever their colour
HAND_CORE_FROM = 0.35  # the core starts this far from the wrist towards the fingertips (the cuff stays a sleeve)
SLEEVE_SPECK_AREA = 0.03  # in square shoulder widths: arm skin smaller than this and away from the hand is a sleeve


def _hand_regions(parts: np.ndarray, skeleton: _Skeleton, skin: np.ndarray | None, lab: np.ndarray,
                  models: _Models) -> dict[str, np.ndarray]:
    """Each hand as CIHP_PGN draws it, a solid blob: the skin around the wrist-to-fingertips line, closed
    and filled, plus that line's outer part unless it looks like a garment (a shadowed hand is hand, one
    in a pocket is the pocket)."""
    shape = parts.shape
    sw = skeleton.shoulder_width
    hands = {}
    for side in ("left", "right"):
        hand = np.zeros(shape, dtype=bool)
        wrist = skeleton.get(_ARM_JOINTS[side][2])
        if wrist is not None and side in skeleton.hands:
            tip = skeleton.hands[side]
            reach = _distance_to_segment(shape, wrist, tip)
            hand = (reach <= HAND_CORE * sw) & (_distance_to_segment(shape, wrist + HAND_CORE_FROM * (tip - wrist), tip)
                                                 <= HAND_CORE * sw)
            if models.skin is not None:
                pixels = lab[hand]
                skin_likelihood = models.skin.log_likelihood(pixels)
                garment = np.zeros(len(pixels), dtype=bool)
                for model in (models.upper, models.lower):
                    if model is not None:
                        garment |= model.log_likelihood(pixels) > skin_likelihood
                hand[hand] = ~garment
            if skin is not None:
                size = 2 * max(1, int(0.03 * sw)) + 1
                near = cv2.morphologyEx((skin & (reach <= HAND_REACH * sw)).astype(np.uint8), cv2.MORPH_CLOSE,
                                        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))).astype(bool)
                hand |= near
            hand = (fill_holes(hand) > 0) & (parts >= 0)
        hands[side] = hand
    return hands


def _without_sleeve_specks(skin: np.ndarray, parts: np.ndarray, hands: dict[str, np.ndarray],
                           skeleton: _Skeleton) -> np.ndarray:
    """Skin of the arms that touches neither a hand nor the body's other skin and is small is a sleeve's
    highlight, not an arm."""
    arms = _in_parts(parts, (_L_ARM, _R_ARM))
    count, components, stats, _ = cv2.connectedComponentsWithStats(skin.astype(np.uint8), connectivity=8)
    hand = hands["left"] | hands["right"]
    keep = np.ones(count, dtype=bool)
    touching_hand = np.zeros(count, dtype=bool)
    touching_hand[np.unique(components[hand & skin])] = True
    in_arms = np.bincount(components[arms].ravel(), minlength=count)
    small = stats[:, cv2.CC_STAT_AREA] < SLEEVE_SPECK_AREA * skeleton.shoulder_width**2
    keep &= ~(small & ~touching_hand & (in_arms == stats[:, cv2.CC_STAT_AREA]))  # wholly on an arm
    keep[0] = False
    return keep[components]


# -- colour models --------------------------------------------------------------------------------


@dataclass
class _Models:
    skin: _ColourModel | None = None
    hair: _ColourModel | None = None
    upper: _Mixture | None = None
    lower: _ColourModel | None = None


def _axial(shape: tuple[int, int], skeleton: _Skeleton) -> np.ndarray:
    """Each pixel's position along the body axis, in torso lengths (0 = shoulders, 1 = hips)."""
    if skeleton.mid_shoulder is None:
        rows = np.arange(shape[0], dtype=np.float32)[:, None] / max(shape[0], 1)
        return np.broadcast_to(rows, shape)
    ox, oy = skeleton.mid_shoulder
    xs = (np.arange(shape[1], dtype=np.float32) - np.float32(ox)) * np.float32(skeleton.axis[0] / skeleton.torso_length)
    ys = (np.arange(shape[0], dtype=np.float32) - np.float32(oy)) * np.float32(skeleton.axis[1] / skeleton.torso_length)
    return ys[:, None] + xs[None, :]


def _colour_models(
    lab: np.ndarray, parts: np.ndarray, skeleton: _Skeleton, face: _Face | None, axial: np.ndarray, area: float
) -> _Models:
    """Skin from the middle of the face; hair from the head around it; upper clothes from the chest
    core; lower clothes from just below the hips."""
    models = _Models()
    if face is not None:
        core = _erode(face.mask, 0.12 * face.width) & ~face.forehead  # a fringe may hide the forehead
        models.skin = _fit_model(lab, core, MIN_MODEL_PIXELS * area, floor=(14.0, 3.0, 3.0))
        beyond_face = _distance_to(face.mask) > 0.2 * face.width
        above_chin = np.arange(parts.shape[0])[:, None] < face.chin[1]
        models.hair = _fit_model(lab, (parts == _HEAD) & beyond_face & above_chin, MIN_MODEL_PIXELS * area)
    torso = parts == _TORSO
    if torso.any():
        inner = _erode(torso, 0.08 * skeleton.shoulder_width)
        core = inner & (axial > 0.1) & (axial < 0.5)
        if models.skin is not None and core.any():  # a neckline's skin is no colour of the top
            core[core] = models.skin.distance(lab[core]) > 3.0
        if int(core.sum()) >= MIN_MODEL_PIXELS * area:
            models.upper = _Mixture(lab[core], MIN_MODEL_PIXELS * area)
    lower_region = _in_parts(parts, (_TORSO, _L_LEG, _R_LEG)) & (axial > 1.05) & (axial < 1.25)
    hips = [skeleton.get(j) for j in (Body25.L_HIP, Body25.R_HIP)]
    if all(h is not None for h in hips):
        xs = np.arange(parts.shape[1])[None, :]
        lo, hi = sorted([hips[0][0], hips[1][0]])
        lower_region &= (xs >= lo) & (xs <= hi)
        models.lower = _fit_model(lab, lower_region, MIN_MODEL_PIXELS * area)
    return models


def _erode(mask: np.ndarray, pixels: float) -> np.ndarray:
    kernel = np.ones((3, 3), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel, iterations=max(int(pixels), 1)).astype(bool)


def _closer_to_skin(lab_pixels: np.ndarray, skin: _ColourModel, rivals: Sequence[_ColourModel | _Mixture | None],
                    limit: float) -> np.ndarray:
    """Within `limit` of the skin model and likelier skin than every rival."""
    distance = skin.distance(lab_pixels)
    is_skin = distance <= limit
    near = lab_pixels.reshape(-1, 3)[is_skin]  # only those are worth comparing with the rivals
    is_skin[is_skin] = _likelier(skin.log_likelihood_at(distance[is_skin]), near, rivals)
    return is_skin


def _likelier(likelihood: np.ndarray, pixels: np.ndarray, rivals: Sequence[_ColourModel | _Mixture | None]
              ) -> np.ndarray:
    """Where `likelihood` (the pixels' log-likelihood under one model) beats every rival model's."""
    wins = np.ones(len(pixels), dtype=bool)
    for rival in rivals:
        if rival is not None:
            wins &= likelihood > rival.log_likelihood(pixels)
    return wins


def _skin_mask(lab: np.ndarray, parts: np.ndarray, models: _Models, frame: _Frame) -> np.ndarray | None:
    """Skin pixels of the silhouette (None without a skin model): closer to the face's colours than to
    the clothes' nearby, then cleaned of specks."""
    if models.skin is None:
        return None
    skin = np.zeros(parts.shape, dtype=bool)
    for part_ids, rivals in (  # skin must look likelier than any garment that can lie there
        ((_HEAD,), (models.hair or models.upper,)),
        ((_TORSO, _L_ARM, _R_ARM, _L_HAND, _R_HAND), (models.upper, models.lower)),
        ((_L_LEG, _R_LEG), (models.lower, models.upper)),
    ):
        region = _in_parts(parts, part_ids)
        skin[region] = _closer_to_skin(lab[region], models.skin, rivals, limit=4.0)
    size = 2 * max(1, round(SKIN_CLEAN_RADIUS_PX * frame.scale / 2)) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    cleaned = cv2.morphologyEx(skin.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    cleaned = cv2.morphologyEx(cleaned, cv2.MORPH_CLOSE, kernel).astype(bool)
    image_area = frame.full_shape[0] * frame.full_shape[1] * frame.scale**2
    return (fill_holes(cleaned, max_area=0.002 * image_area) > 0) & (parts >= 0)


HAIR_REACH = 0.75  # torso lengths below the shoulders that hair falling over the clothes may reach
HAIR_MIN_SEPARATION = 2.0  # hair and top colour models closer than this cannot tell hair over the top
HAIR_MAX_DISTANCE = 3.0  # Mahalanobis distance to the hair model beyond which a pixel is no hair
HAIR_HALF_WIDTH = 1.1  # face widths either side of the face's centre that long hair may fall over


def _hair_zone(face: _Face, axial: np.ndarray) -> np.ndarray:
    """Where hair falling over the shoulders and the top may lie: beside and below the face, down to
    HAIR_REACH torso lengths."""
    centre = face.polygon[:, 0].mean()
    xs = np.arange(axial.shape[1])[None, :]
    return (axial < HAIR_REACH) & (np.abs(xs - centre) <= HAIR_HALF_WIDTH * face.width)


def _hair_region(lab: np.ndarray, parts: np.ndarray, models: _Models, face: _Face | None, skin: np.ndarray | None,
                 axial: np.ndarray) -> np.ndarray | None:
    """Hair as one region around the head: the head outside the face (below the chin only where it
    looks like hair), a fringe over the forehead, and hair-coloured pixels over the top and the arms
    (long hair falling over the shoulders) connected to it. None without a hair model."""
    if models.hair is None or face is None:
        return None
    rows = np.arange(parts.shape[0])[:, None]
    head = (parts == _HEAD) & ~face.mask
    falling = _in_parts(parts, (_TORSO, _L_ARM, _R_ARM)) & _hair_zone(face, axial)
    if models.upper is not None and _separation(models.hair, models.upper) <= HAIR_MIN_SEPARATION:
        falling[:] = False  # hair and top look alike: hair over the top cannot be told apart
    below_chin = head & (rows > face.chin[1])
    candidates = falling | below_chin
    seed = head & ~below_chin
    if skin is not None:
        candidates &= ~skin
        seed &= ~(skin & (_distance_to(face.mask) <= 0.2 * face.width))  # the face's own skin beside the outline
    hair = seed.copy()
    hair[candidates] = _looks_like_hair(lab[candidates], models)
    hair = cv2.morphologyEx(hair.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
    count, components = cv2.connectedComponents(hair.astype(np.uint8), connectivity=8)
    touching = np.unique(components[seed & hair])
    hair = (fill_holes(np.isin(components, touching[touching > 0])) > 0) & ~face.mask & ~_neck_core(face, parts.shape)
    if skin is not None:  # a fringe: what hides the forehead's skin from the outline's top down
        skin_above = np.maximum.accumulate(skin & face.mask, axis=0)
        hair |= face.mask & face.forehead & ~skin_above
    return hair


NECK_HALF_WIDTH = 0.3  # face widths either side of the chin: the neck, never hair


def _neck_core(face: _Face, shape: tuple[int, int]) -> np.ndarray:
    """The middle of the neck: below the chin, within NECK_HALF_WIDTH of it."""
    rows, cols = np.arange(shape[0])[:, None], np.arange(shape[1])[None, :]
    return (rows > face.chin[1]) & (np.abs(cols - face.chin[0]) <= NECK_HALF_WIDTH * face.width)


def _collar(lab: np.ndarray, parts: np.ndarray, models: _Models, skin: np.ndarray | None) -> np.ndarray:
    """Head pixels that are no skin and look like the top (a turtleneck, a high collar)."""
    collar = np.zeros(parts.shape, dtype=bool)
    if models.upper is None or models.skin is None or skin is None:
        return collar
    candidates = (parts == _HEAD) & ~skin
    pixels = lab[candidates]
    collar[candidates] = _likelier(models.upper.log_likelihood(pixels), pixels, (models.skin,))
    return collar


def _looks_like_hair(pixels: np.ndarray, models: _Models) -> np.ndarray:
    """Close to the hair model, and likelier hair than skin or the top."""
    distance = models.hair.distance(pixels)
    likelier = _likelier(models.hair.log_likelihood(pixels), pixels, (models.skin, models.upper))
    return (distance <= HAIR_MAX_DISTANCE) & likelier


# Where the top ends, in torso lengths along the body axis from the shoulders (0) to the hips (1).
WAIST_SEARCH = (0.45, 1.3)  # the span searched: high-waisted trousers to a long top over the hips
WAIST_PRIOR = 0.8  # where it ends when the colours cannot tell: VITON-HD's tops mostly end well above the hips
WAIST_PRIOR_COST = 0.03  # per row away from the prior, against about one per pixel of colour evidence
WAIST_BEND_COST = 0.6  # per row the cut moves between neighbouring columns: a hem is a smooth curve
WAIST_COLUMN_STEP = 2  # columns of the work frame between two cuts the search makes
WAIST_MIN_SEPARATION = 3.0  # colour models closer than this (Mahalanobis) cannot tell top from bottom


def _waist_rows(
    lab: np.ndarray, parts: np.ndarray, skeleton: _Skeleton, axial: np.ndarray, models: _Models,
    skin: np.ndarray | None,
) -> np.ndarray:
    """The row where the top ends, for every column of the frame (float, may lie outside it).

    Each column's cut is the row that best splits its pixels into top above and bottom below by
    colour (the upper and lower models), the cuts of neighbouring columns are tied by a bending cost
    and every cut is pulled a little towards WAIST_PRIOR: a shortest path across the columns (dynamic
    programming). A tucked-in top, a curved hem or a tilted waist comes out as it is; where the
    colours do not tell (alike models, no evidence), the cut is the prior's line."""
    height, width = parts.shape
    prior = _rows_at_level(skeleton, WAIST_PRIOR, width, height)
    if skeleton.get(Body25.L_HIP) is None and skeleton.get(Body25.R_HIP) is None:
        prior = np.maximum(prior, height)  # no hip in the photo: no bottom either, unless the colours show one
    if models.upper is None or models.lower is None or _separation(models.upper, models.lower) <= WAIST_MIN_SEPARATION:
        return prior
    low, high = WAIST_SEARCH
    band = _in_parts(parts, (_TORSO, _L_LEG, _R_LEG)) & (axial > low) & (axial < high)
    if skin is not None:
        band &= ~skin
    rows = np.flatnonzero(band.any(axis=1))
    if len(rows) < 2:
        return prior
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    evidence = np.zeros((bottom - top, width), dtype=np.float32)  # > 0: looks like the bottom
    ys, xs = np.nonzero(band[top:bottom])
    pixels = lab[top:bottom][ys, xs]
    difference = models.lower.log_likelihood(pixels) - models.upper.log_likelihood(pixels)
    evidence[ys, xs] = np.clip(difference / 4.0, -1.0, 1.0)
    # cost[c, x]: bottom-looking pixels above a cut at row top + c, plus top-looking ones below it.
    lower_above = np.vstack([np.zeros((1, width), np.float32), np.cumsum(np.maximum(evidence, 0), axis=0)])
    upper_below = np.cumsum(np.maximum(-evidence, 0)[::-1], axis=0)[::-1]
    upper_below = np.vstack([upper_below, np.zeros((1, width), np.float32)])
    cut_rows = np.arange(top, bottom + 1, dtype=np.float32)[:, None]
    cost = lower_above + upper_below + WAIST_PRIOR_COST * np.abs(cut_rows - prior[None, :])
    # Every WAIST_COLUMN_STEP-th column's cut, interpolated between: a hem does not bend faster.
    columns = np.arange(0, width, WAIST_COLUMN_STEP)
    path = _smooth_path(cost[:, columns], WAIST_BEND_COST * WAIST_COLUMN_STEP)
    return top + np.interp(np.arange(width), columns, path).astype(np.float32)


def _rows_at_level(skeleton: _Skeleton, level: float, width: int, height: int) -> np.ndarray:
    """For every column, the row whose position along the body axis is `level` torso lengths."""
    if skeleton.mid_shoulder is None:
        return np.full(width, level * height, dtype=np.float32)
    ox, oy = skeleton.mid_shoulder
    ax, ay = skeleton.axis
    xs = np.arange(width, dtype=np.float32)
    return (oy + (level * skeleton.torso_length - (xs - ox) * ax) / max(ay, 1e-3)).astype(np.float32)


def _smooth_path(cost: np.ndarray, bend: float) -> np.ndarray:
    """The row index per column minimising sum(cost[row, column]) + bend * sum(|row step|) (Viterbi
    with an L1 step cost, whose minimum over the previous rows is two running minima)."""
    rows, columns = cost.shape
    index = np.arange(rows, dtype=np.float32)
    total = np.empty_like(cost)
    total[:, 0] = cost[:, 0]
    for column in range(1, columns):
        previous = total[:, column - 1]
        from_above = np.minimum.accumulate(previous - bend * index) + bend * index
        from_below = (np.minimum.accumulate((previous + bend * index)[::-1]) - bend * index[::-1])[::-1]
        total[:, column] = cost[:, column] + np.minimum(from_above, from_below)
    path = np.empty(columns, dtype=np.int64)
    path[-1] = int(np.argmin(total[:, -1]))
    for column in range(columns - 1, 0, -1):
        path[column - 1] = int(np.argmin(total[:, column - 1] + bend * np.abs(index - path[column])))
    return path


# -- labelling, one function per body part ------------------------------------------------------


def _label_torso(labels: np.ndarray, parts: np.ndarray, skin: np.ndarray | None, below_waist: np.ndarray,
                 face: _Face | None, left_side: np.ndarray) -> None:
    """Torso: upper clothes above the waist cut, pants below. Its bare skin is torso-skin (10) where it
    joins the neck (the neckline); other bare skin on it (an arm against the body, a hand on the belly)
    is the arm of its side."""
    torso = parts == _TORSO
    labels[torso & ~below_waist] = Cihp.UPPER_CLOTHES
    labels[torso & below_waist] = Cihp.PANTS
    if skin is None:
        return
    bare = torso & skin
    neckline = bare
    if face is not None:
        reach = skin & _in_parts(parts, (_HEAD, _TORSO))
        count, components = cv2.connectedComponents(reach.astype(np.uint8), connectivity=8)
        at_neck = np.unique(components[reach & _neck_core(face, parts.shape)])
        neckline = bare & np.isin(components, at_neck[at_neck > 0])
    labels[neckline] = Cihp.TORSO_SKIN
    labels[bare & ~neckline & left_side] = Cihp.LEFT_ARM
    labels[bare & ~neckline & ~left_side] = Cihp.RIGHT_ARM


def _label_arms(
    labels: np.ndarray,
    parts: np.ndarray,
    skin: np.ndarray | None,
    below_waist: np.ndarray,
    lab: np.ndarray,
    models: _Models,
) -> None:
    """Arms (14 = the person's left) and hands: skin only. A sleeve is upper clothes (contract §1.3);
    what is not skin around an arm hanging by the trousers, and looks like them, is the trousers."""
    for part, hand, label in ((_L_ARM, _L_HAND, Cihp.LEFT_ARM), (_R_ARM, _R_HAND, Cihp.RIGHT_ARM)):
        arm = (parts == part) | (parts == hand)
        if skin is None:
            labels[arm] = label
            continue
        labels[arm & skin] = label
        labels[arm & ~skin] = Cihp.UPPER_CLOTHES
        if models.upper is not None and models.lower is not None:
            rows, cols = np.nonzero(arm & ~skin & below_waist)
            if len(rows) == 0:
                continue
            pixels = lab[rows, cols]
            looks_lower = models.lower.log_likelihood(pixels) > models.upper.log_likelihood(pixels)
            labels[rows[looks_lower], cols[looks_lower]] = Cihp.PANTS


LEG_MIN_LEVEL = 1.15  # torso lengths: bare legs start below the hips and the crotch, never at the hip line


def _label_legs(
    labels: np.ndarray,
    parts: np.ndarray,
    skin: np.ndarray | None,
    below_waist: np.ndarray,
    axial: np.ndarray,
    skeleton: _Skeleton,
    left_side: np.ndarray,
) -> None:
    """Legs (16 = the person's left): bare skin below the waist; clothes there are pants (9); leg pixels
    above the waist cut belong to the top. Without a skin model: pants from the hips down, bare legs
    below visible knees."""
    for part, label, knee in ((_L_LEG, Cihp.LEFT_LEG, Body25.L_KNEE), (_R_LEG, Cihp.RIGHT_LEG, Body25.R_KNEE)):
        leg = parts == part
        labels[leg & ~below_waist] = Cihp.UPPER_CLOTHES
        labels[leg & below_waist] = Cihp.PANTS
        if skin is not None:
            bare = leg & below_waist & skin
            labels[bare & (axial > LEG_MIN_LEVEL)] = label
            high = bare & (axial <= LEG_MIN_LEVEL)  # skin at the hips is a hand or an arm hanging there
            labels[high & left_side] = Cihp.LEFT_ARM
            labels[high & ~left_side] = Cihp.RIGHT_ARM
        elif skeleton.get(knee) is not None:
            labels[leg & below_waist & (axial > _axial_of(skeleton, skeleton.get(knee)))] = label


def _person_left(shape: tuple[int, int], skeleton: _Skeleton) -> np.ndarray:
    """Pixels on the person's left of the body axis (the side of the left shoulder; the image's right
    without one)."""
    ys, xs = np.arange(shape[0], dtype=np.float32)[:, None], np.arange(shape[1], dtype=np.float32)[None, :]
    origin = skeleton.mid_shoulder if skeleton.mid_shoulder is not None else np.array([shape[1] / 2, 0.0])
    across = np.array([skeleton.axis[1], -skeleton.axis[0]])  # the axis turned: points to the image's right
    side = (xs - origin[0]) * across[0] + (ys - origin[1]) * across[1]
    left_shoulder = skeleton.get(Body25.L_SHOULDER)
    if left_shoulder is not None and float(np.dot(left_shoulder - origin, across)) < 0:
        return side < 0
    return side >= 0


def _axial_of(skeleton: _Skeleton, point: np.ndarray) -> float:
    if skeleton.mid_shoulder is None:
        return float("inf")
    return float(np.dot(point - skeleton.mid_shoulder, skeleton.axis) / skeleton.torso_length)


def _label_head(labels: np.ndarray, parts: np.ndarray, face: _Face | None, skin: np.ndarray | None,
                near_face: np.ndarray | None, hair: np.ndarray | None, collar: np.ndarray) -> None:
    """Head: the rest of the head, and `hair` wherever it falls, is hair (2); the face (13) is the face
    outline less the fringe over its forehead, plus bare skin just around the outline (`near_face`)
    above the chin (ears, the forehead above the mesh), with no holes (eyes, brows, lips)."""
    if face is None:
        return
    head = parts == _HEAD
    below_chin = np.arange(parts.shape[0])[:, None] > face.chin[1]
    labels[head] = Cihp.HAIR
    if hair is not None:  # below the chin, what is not hair is the neck, or a collar
        neck = head & below_chin & ~hair
        labels[neck] = Cihp.UPPER_CLOTHES
        bare = neck & (_neck_core(face, parts.shape) & ~collar | (skin if skin is not None else False))
        labels[bare] = Cihp.TORSO_SKIN
    face_region = face.mask & (parts >= 0)
    if skin is not None:
        above_chin = np.arange(parts.shape[0])[:, None] <= face.chin[1]
        face_region |= head & above_chin & near_face & skin
    if hair is not None:
        labels[hair] = Cihp.HAIR
        face_region &= ~hair
    rows, cols = np.nonzero(face_region.any(axis=1))[0], np.nonzero(face_region.any(axis=0))[0]
    if len(rows):  # within the face's box: the cleaning reads a few thousand pixels, not the whole crop
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        face_region[box] = fill_holes(largest_component(face_region[box])) > 0
        labels[face_region] = Cihp.FACE


def _label_neck(
    labels: np.ndarray,
    parts: np.ndarray,
    silhouette: np.ndarray,
    skeleton: _Skeleton,
    face: _Face | None,
    skin: np.ndarray | None,
) -> None:
    """Neck (10): silhouette between the chin and the shoulder line, within a neck's width of the chin;
    only its skin when there is a skin model."""
    if face is None or skeleton.mid_shoulder is None:
        return
    ys, xs = np.arange(parts.shape[0])[:, None], np.arange(parts.shape[1])[None, :]
    chin_x, chin_y = face.chin
    shoulder_y = skeleton.mid_shoulder[1]
    half_width = 0.45 * face.width
    band = silhouette & ~face.mask & (ys > chin_y - 0.1 * face.width) & (ys <= shoulder_y)
    band &= np.abs(xs - chin_x) <= half_width
    band &= _in_parts(parts, (_HEAD, _TORSO))
    if skin is not None:
        band &= skin
    labels[band] = Cihp.TORSO_SKIN


# A skirt has no gap between the legs down to its hem. Across the legs, level by level down from the hips,
# the lower garment must fill the whole span between the legs past where any trousers' crotch is, then
# end (the hem: legs or background below it) above the ankles. Trousers or shorts show a gap at the
# crotch; with the legs together trousers reach the ankles, or the photo's edge, where nothing can be
# told (pants, as before).
SKIRT_MIN_DEPTH = 0.3  # torso lengths below the hips the garment must fill without a gap (crotch: ~0.2)
SKIRT_HEM_ABOVE_ANKLES = 0.15  # torso lengths between the hem and a visible ankle
SKIRT_BELOW_HEM = 0.1  # torso lengths below the hem that must not be garment (else the photo cut it)
SKIRT_FILLED = 0.97  # share of the span between the legs that is garment on a level without a gap
SKIRT_SPAN = 0.7  # the middle of the hip-to-hip span that is read, each level (the legs' own middles off)
SKIRT_GAP_PX = 3  # fewer levels with a gap are a seam or shading, not the garment's end


def _is_skirt(lower: np.ndarray, skeleton: _Skeleton) -> bool:
    """Whether the lower garment (`lower`: its pixels) is a skirt rather than trousers or shorts."""
    left_hip, right_hip = skeleton.get(Body25.L_HIP), skeleton.get(Body25.R_HIP)
    if left_hip is None or right_hip is None or not lower.any():
        return False
    hips = (left_hip + right_hip) / 2
    direction = skeleton.axis
    knees = [skeleton.get(Body25.L_KNEE), skeleton.get(Body25.R_KNEE)]
    if all(knee is not None for knee in knees) and np.linalg.norm((knees[0] + knees[1]) / 2 - hips) > 1:
        down = (knees[0] + knees[1]) / 2 - hips
        direction = down / np.linalg.norm(down)
    # Level t (pixels below the hips along `direction`): SKIRT_SPAN of the hip-to-hip segment moved down by t.
    height, width = lower.shape
    levels = np.arange(int(np.hypot(height, width)))
    across = np.linspace(0.5 - SKIRT_SPAN / 2, 0.5 + SKIRT_SPAN / 2, 33)
    span = right_hip + across[:, None] * (left_hip - right_hip)  # (33, 2)
    points = span[None] + levels[:, None, None] * direction
    xs, ys = np.round(points[..., 0]).astype(int), np.round(points[..., 1]).astype(int)
    inside = ((xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)).all(axis=1)  # one run: a line in a box
    if not inside[0]:
        return False
    filled = lower[ys[inside], xs[inside]].mean(axis=1)
    # The first run of more than SKIRT_GAP_PX levels with a gap ends the garment.
    gaps = filled < SKIRT_FILLED
    hem, run = len(filled), 0
    for level, gap in enumerate(gaps):
        run = run + 1 if gap else 0
        if run > SKIRT_GAP_PX:
            hem = level - run + 1
            break
    torso = skeleton.torso_length
    below = filled[hem : hem + max(1, int(SKIRT_BELOW_HEM * torso))]
    if hem < SKIRT_MIN_DEPTH * torso or hem + len(below) >= len(filled) or below.mean() > 0.5:
        return False  # a gap at the crotch, or the photo ends before the garment does
    for ankle in (skeleton.get(Body25.L_ANKLE), skeleton.get(Body25.R_ANKLE)):
        if ankle is not None and hem > float(np.dot(ankle - hips, direction)) - SKIRT_HEM_ABOVE_ANKLES * torso:
            return False  # down to the ankles: trousers with the legs together, as likely as a long skirt
    return True


def _label_shoes(labels: np.ndarray, parts: np.ndarray, skin: np.ndarray | None, skeleton: _Skeleton) -> None:
    """Shoes (18 = the person's left): non-skin leg pixels around a visible ankle, heel and toes."""
    sw = skeleton.shoulder_width
    for part, label, side in ((_L_LEG, Cihp.LEFT_SHOE, "left"), (_R_LEG, Cihp.RIGHT_SHOE, "right")):
        _, _, ankle, foot = _LEG_JOINTS[side]
        ankle_point = skeleton.get(ankle)
        if ankle_point is None:
            continue
        canvas = np.zeros(parts.shape, dtype=np.uint8)
        radius = max(int(0.12 * sw), 2)
        cv2.circle(canvas, _pt(ankle_point), radius, 1, -1)
        for toe in _chain(skeleton, foot):
            cv2.line(canvas, _pt(ankle_point), _pt(toe), 1, 2 * radius)
        shoe = canvas.astype(bool) & (parts == part)
        shoe &= np.arange(parts.shape[0])[:, None] >= ankle_point[1] - 0.5 * radius
        if skin is not None:
            shoe &= ~skin
        labels[shoe] = label
