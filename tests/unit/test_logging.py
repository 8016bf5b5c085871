"""The TensorBoard writer: sanitised tags, no per-key INFO lines."""

import glob
import logging as std_logging
import struct

from tensorboardX.proto import event_pb2

from dlresearch import logging as dl_logging


def _tags(logdir):
  """(tag, value, step) of every scalar in the event files (TFRecord frames)."""
  out = []
  for path in glob.glob(f'{logdir}/events.out.tfevents.*'):
    data = open(path, 'rb').read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      out += [(v.tag, v.simple_value, event.step) for v in event.summary.value]
  return out


def test_group_keys_become_legal_tags_without_info_lines(tmp_path, caplog):
  caplog.set_level(std_logging.DEBUG)
  w = dl_logging.TensorBoardWriter(str(tmp_path))
  w.write(3, 'eval', {'group/sex=Female/accuracy': 0.75, 'loss': 0.5,
                      'fairness/sex/max_gap': 0.125, 'note': 'not a number'})
  w.close()
  assert sorted(_tags(tmp_path)) == [
      ('eval/fairness/sex/max_gap', 0.125, 3),
      ('eval/group/sex_Female/accuracy', 0.75, 3), ('eval/loss', 0.5, 3)]
  assert not [r for r in caplog.records if 'illegal' in r.getMessage()]
