"""An out-of-tree visalign plugin: a reward, an algorithm and a model factory that visalign finds by their import
path (`package.module:Name`) with no registration and no edit to visalign. See ../README.md."""
