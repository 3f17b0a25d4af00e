"""Models: loading and saving classifiers, student construction from a teacher."""
