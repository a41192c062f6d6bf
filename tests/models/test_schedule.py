import numpy as np
import pytest

from varrl_jax.models.schedule import ScaleSchedule, ScheduleError

NEXTFLOW = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 48, 64)


def test_counts_offsets_and_index():
  s = ScaleSchedule.create(((1, 2), (2, 4), (4, 8)), (16, 32), 4)
  np.testing.assert_array_equal(s.counts, [2, 8, 32])
  np.testing.assert_array_equal(s.offsets, [0, 2, 10, 42])
  assert s.num_tokens == 42
  assert s.scale_index.shape == (42,)
  assert list(np.bincount(s.scale_index)) == [2, 8, 32]
  assert s.span(1) == (2, 10)


def test_int_sides_mean_square_grids():
  s = ScaleSchedule.create((1, 2, 4), (64, 64), 16)
  assert s.grids == ((1, 1), (2, 2), (4, 4))


def test_paper_resolution_names():
  s = ScaleSchedule.create(NEXTFLOW, (1024, 1024), 16)
  # m256: the prefix up to the 16x16 grid is 12 scales; m128 8, m512 16.
  assert s.scale_for_resolution(256) + 1 == 12
  assert s.scale_for_resolution(128) + 1 == 8
  assert s.scale_for_resolution(512) + 1 == 16
  assert s.scale_for_resolution(1024) + 1 == 18
  with pytest.raises(ScheduleError, match='no scale reaches 300 px'):
    s.scale_for_resolution(300)


@pytest.mark.parametrize(
  'scales, image, ds, message',
  [
    ((), (16, 32), 4, 'config.scales: the schedule is empty'),
    (((1, 2), (1, 2), (4, 8)), (16, 32), 4, r'config.scales\[1\]=\(1, 2\) must grow'),
    (((2, 4), (1, 8), (4, 8)), (16, 32), 4, r'config.scales\[1\]'),
    (
      ((1, 2), (2, 4)),
      (16, 32),
      4,
      r'config.scales\[-1\]=\(2, 4\) must equal the latent grid \(4, 8\)',
    ),
    (((1, 2), (4, 8)), (18, 32), 4, 'not divisible'),
    (((0, 2), (4, 8)), (16, 32), 4, r'config.scales\[0\]: sides must be >= 1'),
    ((('a', 2, 3), (4, 8)), (16, 32), 4, r'config.scales\[0\]: expected an int side'),
    (((1, 2), (4, 8)), (16,), 4, 'config.image_size'),
  ],
)
def test_invalid_schedules_name_the_field(scales, image, ds, message):
  with pytest.raises(ScheduleError, match=message):
    ScaleSchedule.create(scales, image, ds)
