# A new task from an existing config: the demo's counts 0..9 in 3 bins instead of 5 ('count'). The top-level `task`
# is the task of the head and of every dataset (numclip_mm.tasks.apply_config_task), so it is the only line to write:
#   python tools/train.py configs/examples/count_3bins_demo.py
# Bin k holds edges[k] <= count < edges[k+1]; the last bin ends at `upper`. The anchors (the numbers the regressor
# scales, docs/method.md §2) default to the edges.
_base_ = ['../numclip_demo.py']
task = dict(name='count3', edges=[0, 3, 6], concepts=['few', 'several', 'many'],
            context='a picture of objects, there are', upper=9)
