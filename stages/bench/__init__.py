"""The evidence table: each method's claim tested on the synthetic and real-footage tasks
(``twostage bench``), and the tiny pretrained backbone the table is measured with (``pretrain``)."""
