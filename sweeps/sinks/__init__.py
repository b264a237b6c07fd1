"""Where trial events go besides the result table: progress lines on stdout, each trial's
progress.csv, TensorBoard, and MLflow. Each is a Sink (base.py) that the recorder calls."""
